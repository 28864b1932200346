"""The paths of the HTTP API: every route pattern, and the paths of one sale filled in.

Part of the wire form (:mod:`flashflow.http.wire` re-exports every name here): routes, the
fast path, the page and the load tests take their paths from here.
"""

from __future__ import annotations

#: The placeholder of a sale's id in a route pattern (a werkzeug rule).
SALE_ID = "<sale_id>"

# Every path the API serves, as the route pattern the server registers and its metrics count
# under. A route that takes a sale's id has a builder of its concrete path below; a new route
# is one pattern here (and one builder, if it takes an id).
#: The list of recent sales.
SALES = "/api/v1/flash-sales"
#: The current sale. werkzeug tries the fixed ``/current`` rules before the by-id ones.
CURRENT = f"{SALES}/current"
#: One sale by id.
SALE = f"{SALES}/{SALE_ID}"
CURRENT_PURCHASE = f"{CURRENT}/purchase"
SALE_PURCHASE = f"{SALE}/purchase"
CURRENT_EVENTS = f"{CURRENT}/events"
SALE_EVENTS = f"{SALE}/events"
#: A buyer's own stream of their standing, in a sale with holds.
CURRENT_PURCHASE_EVENTS = f"{CURRENT_PURCHASE}/events"
SALE_PURCHASE_EVENTS = f"{SALE_PURCHASE}/events"
#: A sale's waiting room: where its line stands (GET), join it (POST).
CURRENT_QUEUE = f"{CURRENT}/queue"
SALE_QUEUE = f"{SALE}/queue"
#: The line's seed, its commitment and every ticket: enough to recompute its order.
QUEUE_AUDIT = f"{SALE_QUEUE}/audit"
#: The placeholder of a ticket's id in a route pattern.
TICKET_ID = "<ticket_id>"
#: One ticket (GET), and its live stream.
TICKET = f"{SALE_QUEUE}/{TICKET_ID}"
TICKET_EVENTS = f"{TICKET}/events"
#: The placeholder of a purchase's id in a route pattern.
PURCHASE_ID = "<purchase_id>"
#: The payment step's calls on one hold: confirm it (paid), or cancel it.
HOLD_CONFIRM = f"{SALE}/purchases/{PURCHASE_ID}/confirm"
HOLD_CANCEL = f"{SALE}/purchases/{PURCHASE_ID}/cancel"
#: The demo payment step of ``flashflow up``: confirms a hold, unpaid. No route elsewhere.
DEMO_PAY = f"/api/v1/demo/flash-sales/{SALE_ID}/purchases/{PURCHASE_ID}/pay"
#: The admin API: create a sale (POST), change one (PATCH by id), end one.
ADMIN_SALES = "/api/v1/admin/flash-sales"
ADMIN_SALE = f"{ADMIN_SALES}/{SALE_ID}"
ADMIN_SALE_END = f"{ADMIN_SALE}/end"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
OPENAPI = "/openapi.json"


def queue_path(sale_id: object) -> str:
    """The path of a sale's waiting room."""
    return fill(SALE_QUEUE, sale_id)


def ticket_path(sale_id: object, ticket_id: object) -> str:
    """The path of one ticket of a sale's waiting room."""
    return fill(TICKET, sale_id).replace(TICKET_ID, str(ticket_id))


def ticket_events_path(sale_id: object, ticket_id: object) -> str:
    """The path of one ticket's live stream."""
    return fill(TICKET_EVENTS, sale_id).replace(TICKET_ID, str(ticket_id))


def fill(pattern: str, sale_id: object) -> str:
    """The concrete path of ``pattern`` for one sale (a UUID, or any text a test sends)."""
    return pattern.replace(SALE_ID, str(sale_id))


def confirm_path(sale_id: object, purchase_id: object) -> str:
    """``POST`` to confirm one hold (the payment step)."""
    return fill(HOLD_CONFIRM, sale_id).replace(PURCHASE_ID, str(purchase_id))


def cancel_path(sale_id: object, purchase_id: object) -> str:
    """``POST`` to cancel one hold (the payment step)."""
    return fill(HOLD_CANCEL, sale_id).replace(PURCHASE_ID, str(purchase_id))


def demo_pay_path(sale_id: object, purchase_id: object) -> str:
    """``POST`` to pay for one hold in ``flashflow up``'s demo (see :data:`DEMO_PAY`)."""
    return fill(DEMO_PAY, sale_id).replace(PURCHASE_ID, str(purchase_id))


def purchase_events_path(sale_id: object) -> str:
    """A buyer's own stream in one sale."""
    return fill(SALE_PURCHASE_EVENTS, sale_id)


def sale_path(sale_id: object) -> str:
    """``GET`` one sale."""
    return fill(SALE, sale_id)


def purchase_path(sale_id: object) -> str:
    """``POST`` a purchase in one sale, or ``GET`` its status."""
    return fill(SALE_PURCHASE, sale_id)


def events_path(sale_id: object) -> str:
    """One sale's event stream."""
    return fill(SALE_EVENTS, sale_id)


def admin_sale_path(sale_id: object) -> str:
    """``PATCH`` one sale through the admin API."""
    return fill(ADMIN_SALE, sale_id)


def admin_end_path(sale_id: object) -> str:
    """``POST`` to end one sale through the admin API."""
    return fill(ADMIN_SALE_END, sale_id)


def sale_id_in(pattern: str, path: str) -> str | None:
    """The sale id in ``path`` if it matches ``pattern`` as werkzeug would (the id one
    non-empty path segment), else None."""
    head, _, tail = pattern.partition(SALE_ID)
    if not path.startswith(head) or not path.endswith(tail):
        return None
    segment = path[len(head):len(path) - len(tail)]  # empty when head and tail overlap
    return segment if segment and "/" not in segment else None


__all__ = [
    "ADMIN_SALE",
    "ADMIN_SALES",
    "ADMIN_SALE_END",
    "CURRENT",
    "CURRENT_EVENTS",
    "CURRENT_PURCHASE",
    "CURRENT_PURCHASE_EVENTS",
    "CURRENT_QUEUE",
    "DEMO_PAY",
    "HEALTHZ",
    "HOLD_CANCEL",
    "HOLD_CONFIRM",
    "METRICS",
    "OPENAPI",
    "PURCHASE_ID",
    "QUEUE_AUDIT",
    "READYZ",
    "SALE",
    "SALES",
    "SALE_EVENTS",
    "SALE_ID",
    "SALE_PURCHASE",
    "SALE_PURCHASE_EVENTS",
    "SALE_QUEUE",
    "TICKET",
    "TICKET_EVENTS",
    "TICKET_ID",
    "admin_end_path",
    "admin_sale_path",
    "cancel_path",
    "confirm_path",
    "demo_pay_path",
    "events_path",
    "fill",
    "purchase_events_path",
    "purchase_path",
    "queue_path",
    "sale_id_in",
    "sale_path",
    "ticket_events_path",
    "ticket_path",
]
