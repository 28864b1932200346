"""The log lines of the admin API: one at INFO for every action done or refused.

A line names the action (``create``, ``update``, ``end``), the sale, each field the request
set with its value before and after (``totalStock 100 -> 80``; a new sale has no before;
a waiting room is its whole ``waitingRoom`` object, None where the sale had none),
and the correlation id its answer carries in ``X-Correlation-Id``. The old values are the
sale as this process's catalog last held it (refreshed after every change, and every
``FLASHFLOW_CATALOG_REFRESH_S``); ``?`` where it held none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from actors import Sale

from .wire import iso, room_body

__all__ = ["action_of", "log_done", "log_refused"]

log = logging.getLogger("flashflow.http.admin")

#: A route's endpoint -> the action it logs.
ACTIONS = {"admin.create_sale": "create", "admin.update_sale": "update",
           "admin.end_sale": "end"}
#: A field's wire name -> the Sale attribute that holds it.
FIELDS = {"productName": "product_name", "totalStock": "total_stock",
          "startTime": "start_time", "endTime": "end_time", "holdSeconds": "hold_seconds",
          "perUserLimit": "per_user_limit", "waitingRoom": "waiting_room"}
UNKNOWN = "?"


def action_of(endpoint: str | None) -> str:
    """The action an admin endpoint performs, as its log lines name it."""
    return ACTIONS.get(endpoint or "", endpoint or "unknown")


def wire_value(sale: Sale | None, field: str) -> Any:
    """A field of ``sale`` as the API shows it, or ``?`` when the sale is not known."""
    if sale is None:
        return UNKNOWN
    value = getattr(sale, FIELDS[field])
    if field == "waitingRoom":
        return None if value is None else room_body(value)
    return iso(value) if field.endswith("Time") else value


def log_done(endpoint: str | None, sale: Sale, before: Sale | None, changed: Iterable[str],
             correlation_id: str) -> None:
    """Log an admin action written to the ledger: ``changed`` are the fields the request set,
    ``before`` the sale as it was (None for one just created)."""
    action = action_of(endpoint)
    changed = set(changed)
    changes = {field: {"old": None if action == "create" else wire_value(before, field),
                       "new": wire_value(sale, field)}
               for field in FIELDS if field in changed}
    said = ", ".join(f"{field} {change['new']!r}" if action == "create"
                     else f"{field} {change['old']!r} -> {change['new']!r}"
                     for field, change in changes.items())
    log.info("admin %s of sale %s: %s", action, sale.id, said,
             extra={"correlation_id": correlation_id, "sale_id": str(sale.id),
                    "admin_action": action, "changes": changes})


def log_refused(endpoint: str | None, view_args: Mapping[str, Any] | None, status: int,
                code: str, correlation_id: str) -> None:
    """Log an admin action refused with ``status`` and wire ``code``."""
    action = action_of(endpoint)
    sale_id = str((view_args or {}).get("sale_id", "")) or None
    log.info("admin %s of sale %s refused: %s %s", action, sale_id or "(new)", status, code,
             extra={"correlation_id": correlation_id, "sale_id": sale_id,
                    "admin_action": action, "error_code": code})
