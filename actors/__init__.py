"""The concurrency core of Flash Flow: one module per actor, talking over memory channels.

``actors`` never imports the HTTP front; ``flashflow`` wires these together.
"""

from ._aio import open_asyncio_bridge
from ._nursery import single_errors
from .backoff import Backoff
from .catalog import Catalog, open_catalog
from .errors import (
    AlreadyPurchased,
    BackendUnavailable,
    FlashFlowError,
    InvalidInput,
    Overloaded,
    RateLimited,
    SaleNotActive,
    SaleNotFound,
    SaleStarted,
    SoldOut,
    StockBelowSold,
    Unauthorized,
)
from .feed_subscription import Subscription
from .holds import Holds, HoldsConfig, open_holds
from .ledger import CommitResult, Ledger, LedgerConfig, open_ledger
from .lines import Lines, LinesConfig, open_lines
from .model import (
    BuyerStatus,
    LedgerState,
    Line,
    Place,
    Purchase,
    Sale,
    SaleStatus,
    Standing,
    Tally,
    Ticket,
    WaitingRoom,
    utc_now,
)
from .rate_limiter import LimiterConfig, RateLimiter, open_rate_limiter
from .reconciler import Reconciler, open_reconciler
from .stock_feed import FeedConfig, StockFeed, open_stock_feed
from .stock_gate import GateConfig, StockGate, open_stock_gate
from .user_serializer import SerializerConfig, UserSerializer, open_user_serializer

__all__ = [
    "AlreadyPurchased",
    "BackendUnavailable",
    "Backoff",
    "BuyerStatus",
    "Catalog",
    "CommitResult",
    "FeedConfig",
    "FlashFlowError",
    "GateConfig",
    "Holds",
    "HoldsConfig",
    "InvalidInput",
    "Ledger",
    "LedgerConfig",
    "LedgerState",
    "LimiterConfig",
    "Line",
    "Lines",
    "LinesConfig",
    "Overloaded",
    "Place",
    "Purchase",
    "RateLimited",
    "RateLimiter",
    "Reconciler",
    "Sale",
    "SaleNotActive",
    "SaleNotFound",
    "SaleStarted",
    "SaleStatus",
    "SerializerConfig",
    "SoldOut",
    "Standing",
    "StockBelowSold",
    "StockFeed",
    "StockGate",
    "Subscription",
    "Tally",
    "Ticket",
    "Unauthorized",
    "UserSerializer",
    "WaitingRoom",
    "open_asyncio_bridge",
    "open_catalog",
    "open_holds",
    "open_ledger",
    "open_lines",
    "open_rate_limiter",
    "open_reconciler",
    "open_stock_feed",
    "open_stock_gate",
    "open_user_serializer",
    "single_errors",
    "utc_now",
]
