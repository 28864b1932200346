"""The concurrency core of Flash Flow: one module per actor, talking over memory channels.

``actors`` never imports the HTTP front; ``flashflow`` wires these together.
"""

from .catalog import Catalog, open_catalog
from .errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    SaleNotActive,
    SaleNotFound,
    SoldOut,
)
from .ledger import CommitResult, Ledger, LedgerConfig, open_ledger
from .model import LedgerState, Purchase, Sale, SaleStatus
from .stock_gate import GateConfig, StockGate, open_stock_gate
from .user_serializer import UserSerializer, open_user_serializer

__all__ = [
    "AlreadyPurchased",
    "BackendUnavailable",
    "Catalog",
    "CommitResult",
    "FlashFlowError",
    "GateConfig",
    "InvalidInput",
    "Ledger",
    "LedgerConfig",
    "LedgerState",
    "Overloaded",
    "PayloadTooLarge",
    "Purchase",
    "Sale",
    "SaleNotActive",
    "SaleNotFound",
    "SaleStatus",
    "SoldOut",
    "StockGate",
    "UserSerializer",
    "open_catalog",
    "open_ledger",
    "open_stock_gate",
    "open_user_serializer",
]
