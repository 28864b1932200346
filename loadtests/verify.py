"""The invariants of a flash sale: :mod:`flashflow.invariants` holds the one check.

Re-exported here for the load test and the benchmark, which judge their runs with it.
"""

from flashflow.invariants import Check, GateSnapshot, LedgerSnapshot, verify

__all__ = ["Check", "GateSnapshot", "LedgerSnapshot", "verify"]
