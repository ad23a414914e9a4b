"""Python client of credit-sidecar: reserve credits before expensive work, commit what was used,
release the rest — with declines as values, errors as exceptions, and retries that reuse the
request id.

    from credit_sidecar import CreditClient, Sku, HoldDeclined

    with CreditClient() as client:                      # 127.0.0.1:50051
        with client.hold("acme", "ann", "enrichment", Sku("enrichment.row", 100)) as hold:
            for row in rows:
                if enrich(row):
                    hold.commit(business_key=f"contact:{row.id}:enrichment")
        # leaving the block released what was not committed
"""

from ._channel import DEFAULT_ADDRESS, Token
from .aio import AsyncAdmin, AsyncCreditClient, AsyncHold
from .client import Admin, CreditClient
from .errors import (
    RETRYABLE_CODES,
    CreditError,
    DeadlineExceeded,
    FieldViolation,
    HoldDeclined,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    RequestIdReused,
    Resource,
    Unauthenticated,
    Unavailable,
)
from .hold import Hold, KeepAlive
from .retry import DEFAULT_TIMEOUT, NO_RETRY, RetryHook, RetryPolicy
from .types import (
    COMMIT_BATCH_MAX,
    AccountUpdate,
    Balance,
    BatchCommitted,
    BatchItem,
    Charged,
    Committed,
    Cost,
    Declined,
    Extended,
    GrantKind,
    ItemCommitted,
    Journaled,
    Outcome,
    Period,
    Quote,
    Released,
    Reservation,
    ReservationState,
    Reserved,
    Scope,
    Sku,
    Totals,
    TrialStarted,
)
from .watch import AccountWatch, AsyncAccountWatch

__all__ = [
    "COMMIT_BATCH_MAX",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "RETRYABLE_CODES",
    "AccountUpdate",
    "AccountWatch",
    "Admin",
    "AsyncAccountWatch",
    "AsyncAdmin",
    "AsyncCreditClient",
    "AsyncHold",
    "Balance",
    "BatchCommitted",
    "BatchItem",
    "Charged",
    "Committed",
    "Cost",
    "CreditClient",
    "CreditError",
    "DeadlineExceeded",
    "Declined",
    "Extended",
    "FieldViolation",
    "GrantKind",
    "Hold",
    "HoldDeclined",
    "InvalidArgument",
    "ItemCommitted",
    "Journaled",
    "KeepAlive",
    "NotFound",
    "Outcome",
    "Overloaded",
    "Period",
    "PermissionDenied",
    "Quote",
    "Released",
    "RequestIdReused",
    "Reservation",
    "ReservationState",
    "Reserved",
    "Resource",
    "RetryHook",
    "RetryPolicy",
    "Scope",
    "Sku",
    "Token",
    "Totals",
    "TrialStarted",
    "Unauthenticated",
    "Unavailable",
]
