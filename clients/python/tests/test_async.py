"""The asyncio client: the same flows, with the hold's keep-alive as a task."""

from __future__ import annotations

import asyncio

import pytest

from credit_sidecar import (
    AsyncCreditClient,
    Committed,
    Declined,
    Extended,
    HoldDeclined,
    KeepAlive,
    Outcome,
    Reserved,
    ReservationState,
    Scope,
    Sku,
)
from helpers import afund
from servers import Sidecar


async def test_concurrent_commits_on_one_hold(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=100)
        async with client.hold("acme", "ann", "enrichment", Sku("enrichment.row", 30)) as hold:
            results = await asyncio.gather(*(hold.commit(business_key=f"contact:{n}") for n in range(20)))
        assert all(isinstance(r, Committed) and r.charged == 1 for r in results)
        reservation = await client.get_reservation(hold.reservation_id)
        assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 20, 10)
        assert hold.committed == 20


async def test_dialer_keep_alive_task_extends_and_stops(sidecar: Sidecar) -> None:
    declines: list[Declined] = []
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=8)
        keep_alive = KeepAlive(every=0.2, ttl_ms=1000, cost=Sku("dialer.minute.us", 1), on_decline=declines.append)
        async with client.hold(
            "acme", "ann", "dialer", Sku("dialer.minute.us", 3), ttl_ms=1000, keep_alive=keep_alive
        ) as hold:
            task = hold._extender
            await asyncio.sleep(1.5)  # the call goes on past the 1 s the hold was made for
            minutes = await hold.commit(Sku("dialer.minute.us", 3), final=True)
        assert task is not None and task.done(), "the keep-alive task ends with the hold"
        assert isinstance(minutes, Committed) and minutes.charged == 3
        # 3 held at first, then one more per extension until the team's 8 credits were all held
        # (by ~1 s); later extensions were declined (and reported), and the hold lives on until
        # the deadline the last granted extension set.
        assert hold.extensions == 5
        assert isinstance(hold.last_extension, Declined)
        assert declines and all(d.outcome is Outcome.INSUFFICIENT_CREDIT for d in declines)
        balance = await client.get_balance("acme")
        assert (balance.totals.spent, balance.totals.held) == (3, 0)


async def test_a_failing_async_body_releases_the_hold(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=50)
        with pytest.raises(ValueError):
            async with client.hold("acme", "ann", "ai", Sku("ai.research", 4)) as hold:
                await hold.commit(Sku("ai.research", 1))
                raise ValueError("model refused")
        reservation = await client.get_reservation(hold.reservation_id)
        assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 5, 15)


async def test_a_cancelled_async_body_releases_the_hold(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=50)
        entered = asyncio.Event()
        holds = []

        async def work() -> None:
            async with client.hold("acme", "ann", "enrichment", 10) as hold:
                holds.append(hold)
                entered.set()
                await asyncio.Event().wait()  # runs until cancelled

        task = asyncio.create_task(work())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reservation = await client.get_reservation(holds[0].reservation_id)
        assert reservation.state is ReservationState.RELEASED and reservation.returned == 10


async def test_a_declined_async_hold_raises_before_the_body(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=5)
        with pytest.raises(HoldDeclined) as raised:
            async with client.hold("acme", "ann", "email", 6):
                raise AssertionError("the body must not run")
        assert raised.value.declined.outcome is Outcome.INSUFFICIENT_CREDIT


async def test_partial_reserve_extend_and_hold(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client)  # 1000 credits; a German dialer minute costs 2
        reserved = await client.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 700), min_quantity=100)
        assert isinstance(reserved, Reserved)
        assert (reserved.quantity, reserved.amount, reserved.available) == (500, 1000, 0)

        refused = await client.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 700), min_quantity=100)
        assert isinstance(refused, Declined) and (refused.outcome, refused.scope) == (
            Outcome.INSUFFICIENT_CREDIT,
            Scope.ACCOUNT,
        )
        assert (refused.requested, refused.available) == (200, 0)

        await client.commit(reserved.reservation_id, Sku("dialer.minute.de", 490))  # 980 spent, 20 held
        await client.admin.grant("acme", 30)
        grown = await client.extend(reserved.reservation_id, Sku("dialer.minute.de", 20), min_quantity=5)
        assert isinstance(grown, Extended) and (grown.added_quantity, grown.added, grown.held) == (15, 30, 50)
        await client.release(reserved.reservation_id)

        async with client.hold("acme", "ann", "enrichment", Sku("enrichment.row", 80), min_quantity=1) as hold:
            assert hold.reserved.quantity == 50
            more = await hold.extend(Sku("enrichment.row", 5), min_quantity=1)
        assert isinstance(more, Declined) and more.requested == 1


async def test_a_partial_keep_alive_task_takes_the_minutes_left(sidecar: Sidecar) -> None:
    declines: list[Declined] = []
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=14)
        keep_alive = KeepAlive(
            every=0.2, ttl_ms=1000, cost=Sku("dialer.minute.de", 3), min_quantity=1, on_decline=declines.append
        )
        async with client.hold(
            "acme", "ann", "dialer", Sku("dialer.minute.de", 2), ttl_ms=1000, keep_alive=keep_alive
        ) as hold:
            for _ in range(200):  # at most 10 s
                if declines:
                    break
                await asyncio.sleep(0.05)
            held = hold.held
        # 4 held, then 6 (three minutes), then 4 (the two minutes left), then declined.
        assert (held, hold.extensions) == (14, 2)
        assert (declines[0].requested, declines[0].available) == (2, 0)


async def test_category_budgets_through_the_async_client(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client)
        set_ = await client.admin.set_category_budget("acme", "mobile", 25, request_id="mobile-budget")
        assert Outcome(set_.outcome) is Outcome.OK and (set_.budget, set_.used, set_.remaining) == (25, 0, 25)

        async with client.hold("acme", "ann", "mobile", Sku("mobile.verified", 2)) as hold:
            await hold.commit(Sku("mobile.verified"), final=True)
        refused = await client.reserve("acme", "bob", "mobile", Sku("mobile.verified", 2))
        assert isinstance(refused, Declined) and (refused.outcome, refused.scope, refused.scope_id) == (
            Outcome.CATEGORY_BUDGET_REACHED,
            Scope.CATEGORY,
            "mobile",
        )
        assert (refused.requested, refused.category_remaining) == (20, 15), "the 10 not used went back"
        quote = await client.quote("acme", Sku("mobile.verified", 1), category="mobile")
        assert (quote.fits, quote.units_that_fit, quote.category_remaining) == (True, 1, 15)

        lifted = await client.admin.set_category_budget("acme", "mobile", None)
        assert not lifted.HasField("budget") and lifted.used == 10
        assert isinstance(await client.reserve("acme", "bob", "mobile", Sku("mobile.verified", 2)), Reserved)
        account = await client.admin.get_account("acme")
        assert [(b.category, b.HasField("budget"), b.used) for b in account.category_budgets] == [("mobile", False, 30)]
