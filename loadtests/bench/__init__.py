"""The benchmark: how close Flash Flow gets to the bare stack under it, measured with wrk.

Two ceilings (a bare ASGI callable and a bare quart-trio app, on hypercorn's trio worker) and
Flash Flow's scenarios (``/healthz``, ``GET /current``, purchases that succeed, purchases on
a sold-out sale, repeat purchases) run side by side per worker count; a whole sale runs end
to end and is verified.
"""

from .goals import Goal, goals
from .sale import SaleRun, run_sale
from .scenarios import Measurement, Options, run_configuration

__all__ = ["Goal", "Measurement", "Options", "SaleRun", "goals", "run_configuration",
           "run_sale"]
