"""admin.watch_account (CreditAdmin.WatchAccount): the account streamed as it changes, with the
errors that refuse or end a watch raised as the package's exceptions, and closing that cancels
the call (the sidecar gives the watch's place back)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import pytest

from credit_sidecar import (
    AccountUpdate,
    AccountWatch,
    AsyncAccountWatch,
    AsyncCreditClient,
    CreditClient,
    InvalidArgument,
    NotFound,
    Overloaded,
    Reserved,
    Resource,
    Unavailable,
)
from helpers import afund, fund
from servers import Sidecar

BOUND = 10.0
"""Seconds a test waits for an update that must come (a bound, not a wait)."""

WATCHES_MAX = 64
"""The sidecar's bound on open WatchAccount streams."""


def _next(watch: AccountWatch) -> AccountUpdate:
    """The next update, which must come within the bound: the watch is closed otherwise, which
    ends the iteration and fails the test instead of hanging it."""
    timer = threading.Timer(BOUND, watch.close)
    timer.start()
    try:
        return next(watch)
    except StopIteration:
        raise AssertionError(f"no update within {BOUND} s") from None
    finally:
        timer.cancel()


def test_a_watch_sends_the_account_then_each_change(client: CreditClient) -> None:
    fund(client)  # 1000 credits
    with client.admin.watch_account("acme", interval_ms=100) as watch:
        first = _next(watch)
        assert isinstance(first, AccountUpdate) and first.at_unix_ms > 0
        assert first.account == client.admin.get_account("acme"), "the account as GetAccount answers it"
        assert (first.account.totals.available, first.account.totals.held, first.account.open_reservations) == (
            1000,
            0,
            0,
        )

        reserved = client.reserve("acme", "ann", "email", 30)
        assert isinstance(reserved, Reserved)
        held = _next(watch)
        assert held.at_unix_ms >= first.at_unix_ms
        assert (held.account.totals.available, held.account.totals.held, held.account.open_reservations) == (
            970,
            30,
            1,
        )

        # Reads change nothing, so they send nothing: the next update is the next change.
        client.get_balance("acme")
        client.commit(reserved.reservation_id, 10, final=True)
        committed = _next(watch).account.totals
        assert (committed.available, committed.held, committed.spent) == (990, 0, 10)
    assert watch.closed
    assert next(watch, None) is None, "a closed watch yields nothing more"


def test_a_bad_interval_is_invalid_argument_naming_it(client: CreditClient) -> None:
    fund(client)
    for interval_ms in (50, 60_001, -1):
        with pytest.raises(InvalidArgument) as raised:
            client.admin.watch_account("acme", interval_ms=interval_ms)
        assert raised.value.field == "interval_ms", raised.value
        assert not raised.value.retryable and raised.value.attempts == 1


def test_an_unknown_account_is_not_found(client: CreditClient) -> None:
    with pytest.raises(NotFound) as raised:
        client.admin.watch_account("nobody")
    assert raised.value.resource == Resource("account", "nobody"), raised.value
    assert "nobody" in raised.value.message


@pytest.mark.parametrize("engine", ["embedded"])
def test_closing_a_watch_cancels_it_and_frees_its_place(client: CreditClient) -> None:
    fund(client)
    watches = [client.admin.watch_account("acme") for _ in range(WATCHES_MAX)]
    try:
        with pytest.raises(Overloaded) as raised:
            client.admin.watch_account("acme")
        assert raised.value.reason == "OVERLOADED" and raised.value.retryable, raised.value
        assert raised.value.retry_delay is not None

        # A close from another thread ends a next() that waits for a change.
        waiting = watches.pop()
        assert next(waiting).account.account_id == "acme"  # the first update, received at opening
        ended: list[AccountUpdate | None] = []
        reader = threading.Thread(target=lambda: ended.append(next(waiting, None)))
        reader.start()
        time.sleep(0.2)
        waiting.close()
        reader.join(BOUND)
        assert not reader.is_alive() and ended == [None]

        # The cancel reached the sidecar: the place is free again.
        bound = time.monotonic() + BOUND
        while True:
            try:
                watches.append(client.admin.watch_account("acme"))
                break
            except Overloaded:
                assert time.monotonic() < bound, "the closed watch's place was not given back"
                time.sleep(0.05)
    finally:
        for watch in watches:
            watch.close()


@pytest.mark.parametrize("engine", ["embedded"])
def test_a_sidecar_that_stops_ends_the_watch_with_shutting_down(sidecar: Sidecar) -> None:
    with CreditClient(sidecar.address) as client:
        fund(client)
        with client.admin.watch_account("acme") as watch:
            assert _next(watch).account.account_id == "acme"
            stopping = threading.Thread(target=sidecar.stop)
            stopping.start()
            try:
                with pytest.raises(Unavailable) as raised:
                    _next(watch)
            finally:
                stopping.join()
        assert raised.value.reason == "SHUTTING_DOWN" and raised.value.retryable, raised.value


async def test_the_async_watch(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client)
        async with client.admin.watch_account("acme", interval_ms=100) as watch:
            first = await _anext(watch)
            assert first.account == await client.admin.get_account("acme")
            assert first.account.totals.available == 1000
            reserved = await client.reserve("acme", "ann", "email", 30)
            assert isinstance(reserved, Reserved)
            held = (await _anext(watch)).account
            assert (held.totals.held, held.open_reservations) == (30, 1)
        assert watch.closed
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()

        # A refused watch raises on opening (async with), or from the first step (async for).
        with pytest.raises(InvalidArgument) as raised:
            async with client.admin.watch_account("acme", interval_ms=99):
                raise AssertionError("a refused watch does not open")
        assert raised.value.field == "interval_ms"
        with pytest.raises(NotFound):
            async for _ in client.admin.watch_account("nobody"):
                raise AssertionError("an unknown account sends no update")

        # Cancelling the task that waits for the next update cancels the call.
        watch = client.admin.watch_account("acme")
        assert (await _anext(watch)).account.account_id == "acme"
        waiting = asyncio.ensure_future(watch.__anext__())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert watch.closed
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()


@pytest.mark.parametrize("engine", ["embedded"])
async def test_an_async_watch_closed_or_dropped_frees_its_place(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client)
        watches = [await client.admin.watch_account("acme").open() for _ in range(WATCHES_MAX)]
        try:
            with pytest.raises(Overloaded):
                await client.admin.watch_account("acme").open()
            watches.pop().close()
            watches.append(await _reopened(client))
            del watches[0]  # dropped without close(): cancelled when collected
            watches.append(await _reopened(client))
        finally:
            for watch in watches:
                watch.close()


async def _reopened(client: AsyncCreditClient) -> AsyncAccountWatch:
    """A watch opened once the sidecar has freed a place (within the bound)."""
    bound = time.monotonic() + BOUND
    while True:
        try:
            return await client.admin.watch_account("acme").open()
        except Overloaded:
            assert time.monotonic() < bound, "the closed or dropped watch's place was not given back"
            await asyncio.sleep(0.05)


async def _anext(watch: AsyncIterator[AccountUpdate]) -> AccountUpdate:
    return await asyncio.wait_for(watch.__anext__(), BOUND)

