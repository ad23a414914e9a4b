"""When and how long to wait before trying a failed call again.

Every retry resends the *same* request, request id included: the sidecar answers a repeated id
with the first answer and applies nothing twice, so an UNAVAILABLE or a lost response (outcome
unknown) is resolved by retrying, never by a new id (README "Overload and deadlines").
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CreditError

log = logging.getLogger("credit_sidecar")

DEFAULT_TIMEOUT = 2.0
"""Seconds one attempt may take. A decision takes well under a millisecond on localhost; the
sidecar answers UNAVAILABLE shortly before the deadline when its store is slow, so a short
deadline turns a hung store into a retry instead of a stuck worker."""


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered, bounded exponential backoff for retryable errors.

    Attempt ``n`` (from 1) that fails retryably waits a random time in ``[cap/2, cap]`` where
    ``cap = min(max_backoff, initial_backoff * multiplier**(n-1))`` — or the server's RetryInfo
    delay when that is longer — unless ``max_attempts`` were made or the wait would end past
    ``budget`` seconds after the first attempt started.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    budget: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def delay(self, error: CreditError, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up and raise ``error``."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        wait = random.uniform(cap / 2, cap)
        if error.retry_delay is not None:
            wait = max(wait, error.retry_delay)
        if elapsed + wait > self.budget:
            return None
        return wait


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
"""One attempt: errors surface at once (the caller retries, with ``error.request_id``)."""

RetryHook = Callable[[CreditError, int, float], None]
"""Called before each retry with the error, the attempt that failed (from 1) and the wait."""


def log_retry(method: str, error: CreditError, delay: float) -> None:
    log.info(
        "credit-sidecar %s failed (%s, attempt %d); retrying in %.3f s with %s",
        method,
        error.code.name,
        error.attempts,
        delay,
        f"the same {len(error.item_ids)} item ids" if error.item_ids else f"request_id {error.request_id}",
    )
