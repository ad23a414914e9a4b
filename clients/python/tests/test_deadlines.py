"""Every attempt has a deadline (the client's default, the client's setting, or the call's), so a
hung sidecar costs a bounded wait, never a stuck worker; retries stop within the policy's bounds."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from credit_sidecar import (
    DEFAULT_TIMEOUT,
    NO_RETRY,
    AsyncCreditClient,
    CreditClient,
    DeadlineExceeded,
    RetryPolicy,
)
from helpers import afund, fund
from servers import Sidecar

SLACK = 1.0
"""Seconds a deadline may be overshot on a loaded 2-core machine."""


def _timed(call: Callable[[], object]) -> tuple[DeadlineExceeded, float]:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as raised:
        call()
    return raised.value, time.monotonic() - started


def freeze(client: CreditClient, sidecar: Sidecar) -> None:
    """Connects ``client`` (and sets up the account), then freezes the sidecar with SIGSTOP: the
    connection stays up and requests reach the kernel, but nothing answers."""
    fund(client)
    sidecar.pause()


def test_the_default_deadline_bounds_each_attempt(sidecar: Sidecar) -> None:
    with CreditClient(sidecar.address, retry=NO_RETRY) as client:
        freeze(client, sidecar)
        assert client.timeout == DEFAULT_TIMEOUT == 2.0
        error, elapsed = _timed(lambda: client.reserve("acme", "ann", "email", 1))
    assert DEFAULT_TIMEOUT <= elapsed < DEFAULT_TIMEOUT + SLACK
    assert error.retryable and error.attempts == 1 and error.request_id


def test_client_and_call_deadlines_override_the_default(sidecar: Sidecar) -> None:
    with CreditClient(sidecar.address, timeout=0.6, retry=NO_RETRY) as client:
        freeze(client, sidecar)
        _, elapsed = _timed(lambda: client.get_balance("acme"))
        assert 0.6 <= elapsed < 0.6 + SLACK
        _, elapsed = _timed(lambda: client.get_balance("acme", timeout=0.2))
        assert 0.2 <= elapsed < 0.2 + SLACK


def test_retries_stop_after_max_attempts_with_one_request_id(sidecar: Sidecar) -> None:
    seen: list[tuple[int, str | None, float]] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=0.1)
    with CreditClient(
        sidecar.address, timeout=0.2, retry=policy, on_retry=lambda e, n, wait: seen.append((n, e.request_id, wait))
    ) as client:
        freeze(client, sidecar)
        error, elapsed = _timed(lambda: client.commit("acme/1", 1))
    assert error.attempts == 3
    assert [n for n, _, _ in seen] == [1, 2]
    assert {rid for _, rid, _ in seen} == {error.request_id}
    assert all(0.05 <= wait <= 0.1 for _, _, wait in seen), "jitter stays within [cap/2, cap]"
    assert 3 * 0.2 + 2 * 0.05 <= elapsed < 3 * 0.2 + 2 * 0.1 + SLACK


def test_the_retry_budget_bounds_the_whole_call(sidecar: Sidecar) -> None:
    policy = RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.05, budget=1.0)
    with CreditClient(sidecar.address, timeout=0.3, retry=policy) as client:
        freeze(client, sidecar)
        error, elapsed = _timed(lambda: client.get_balance("acme"))
    assert 2 <= error.attempts <= 4
    assert elapsed < 1.0 + 0.3 + SLACK


async def test_async_calls_have_the_same_deadlines(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address, retry=NO_RETRY) as client:
        assert client.timeout == DEFAULT_TIMEOUT
        await afund(client)
        sidecar.pause()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.get_balance("acme", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 0.3 + SLACK
