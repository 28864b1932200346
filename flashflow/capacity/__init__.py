"""Capacity benchmarks that drive the actors directly, without HTTP.

``python -m flashflow.capacity gate`` measures the stock gate alone on one Redis and on a
Redis Cluster; ``python -m flashflow.capacity big-sale`` sells one big sale through the
actor tree and checks it against the stores; ``python -m flashflow.capacity lapses`` lets
every hold of a big sale end in the same second, a waitlist behind them, and times the
sweep that lapses them and hands their units on. They stay in the wheel as an operator's
sizing tool, and drive the actors directly, which the HTTP load tests in ``loadtests/``
never do. All are scenarios on the load harness (:mod:`flashflow.capacity.harness`) that
the load tests share: it lives here so that it ships with this tool, and ``loadtests``
imports it from here.
"""

from .big_sale import BigSaleRun, run_big_sale
from .gate import GateFigure, measure
from .lapses import LapsesRun, run_lapses

__all__ = ["BigSaleRun", "GateFigure", "LapsesRun", "measure", "run_big_sale", "run_lapses"]
