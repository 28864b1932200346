"""Capacity benchmarks that drive the actors directly, without HTTP.

``python -m flashflow.capacity gate`` measures the stock gate alone on one Redis and on a
Redis Cluster; ``python -m flashflow.capacity big-sale`` sells one big sale through the
actor tree and checks it against the stores. They live in the application package because
they import the actors, which the HTTP load tests in ``loadtests/`` never do.
"""

from .big_sale import BigSaleRun, run_big_sale
from .gate import GateFigure, measure

__all__ = ["BigSaleRun", "GateFigure", "measure", "run_big_sale"]
