"""The benchmark: how close Flash Flow gets to its own HTTP ceiling, measured with wrk.

Scenarios (``/healthz``, purchases during the sale and after sell-out, the status read)
run side by side per worker count; a whole sale runs end to end and is verified.
"""

from .sale import SaleRun, run_sale
from .scenarios import Measurement, Options, run_configuration

__all__ = ["Measurement", "Options", "SaleRun", "run_configuration", "run_sale"]
