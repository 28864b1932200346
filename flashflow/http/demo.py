"""The demo payment step of ``flashflow up``: a Pay button for the buyer's page.

A sale with holds waits for the shop's payment step to confirm each hold
(:mod:`flashflow.http.holds`, with the admin token or a payments token, which a buyer's page
must never hold). ``flashflow up`` has no shop, so it turns on ``demo_payments`` and this
route stands in for one: ``POST`` :data:`~flashflow.http.wire.DEMO_PAY` confirms the hold
whose purchase id it names, through the same actor call as the real confirm, with the same
answers (``200`` the purchase, confirmed; ``409 HOLD_EXPIRED`` past its end; ``404`` for an
unknown purchase). Knowing the purchase id, which only its holder was told, is the whole
check. Without ``demo_payments`` the route is never registered, so it answers 404 like any
unknown path.
"""

from __future__ import annotations

from quart import Response
from quart_schema import hide
from quart_trio import QuartTrio

from ..runtime import Runtime
from . import validation
from .wire import DEMO_PAY, envelope, purchase_body


def install_demo_payments(app: QuartTrio, runtime: Runtime) -> None:
    """Add the demo payment route to ``app`` (only ``flashflow up`` asks for it)."""

    @app.post(DEMO_PAY)
    @hide  # a stand-in for the shop's payment step, not part of the API
    async def demo_pay(sale_id: str, purchase_id: str) -> Response:
        sale = runtime.serializer.sale(validation.sale_id(sale_id))
        purchase = await runtime.holds.confirm(sale.id, validation.purchase_id(purchase_id))
        return envelope(purchase_body(purchase, sale))


__all__ = ["install_demo_payments"]
