"""Load tests of Flash Flow: the locust stampede, its verification, and the benchmark.

``python -m loadtests`` runs the stampede and checks the invariants;
``python -m loadtests.bench`` measures the server against its ceiling.
"""

from .records import Record, RecordWriter, read_records
from .shape import Stages
from .verify import Check, GateSnapshot, LedgerSnapshot, verify

__all__ = ["Check", "GateSnapshot", "LedgerSnapshot", "Record", "RecordWriter", "Stages",
           "read_records", "verify"]
