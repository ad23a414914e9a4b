"""Retries reuse the request id, so a change whose answer was lost is answered once and applied
once — tested by really losing answers: a relay that drops them, a sidecar killed and restarted on
its ledger, a sidecar frozen with SIGSTOP."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from conftest import StartSidecar
from credit_sidecar import (
    AsyncCreditClient,
    BatchItem,
    Committed,
    CreditClient,
    CreditError,
    DeadlineExceeded,
    ItemCommitted,
    Reserved,
    ReservationState,
)
from helpers import afund, fund
from proxy import LossyProxy
from servers import Sidecar


@pytest.fixture
def proxy(sidecar: Sidecar) -> Iterator[LossyProxy]:
    relay = LossyProxy(sidecar.address)
    yield relay
    relay.close()


def healing(proxy: LossyProxy, failures: list[CreditError]) -> Callable[[CreditError, int, float], None]:
    """An on_retry that records the failure, checks the attempt was lost (so the sidecar had
    applied it), and lets the next attempt through."""

    def on_retry(error: CreditError, attempt: int, delay: float) -> None:
        failures.append(error)
        assert proxy.lost.is_set(), "the sidecar answered the lost attempt: it had applied it"
        proxy.heal()

    return on_retry


def test_a_commit_whose_answer_was_lost_is_retried_with_its_id_and_applied_once(
    sidecar: Sidecar, proxy: LossyProxy
) -> None:
    failures: list[CreditError] = []
    with CreditClient(proxy.address, timeout=0.5, on_retry=healing(proxy, failures)) as client:
        fund(client)
        reserved = client.reserve("acme", "ann", "enrichment", 10)
        assert isinstance(reserved, Reserved)
        proxy.lose_answers()
        committed = client.commit(reserved.reservation_id, 3, labels={"row": "1"})

        assert isinstance(committed, Committed) and committed.charged == 3
        assert failures and failures[0].code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert {error.request_id for error in failures} == {committed.request_id}
        reservation = client.get_reservation(reserved.reservation_id)
        assert (reservation.committed, reservation.commit_count, reservation.held) == (3, 1, 7)


def test_a_batch_whose_answer_was_lost_is_retried_with_its_item_ids_and_applied_once(
    sidecar: Sidecar, proxy: LossyProxy
) -> None:
    failures: list[CreditError] = []
    with CreditClient(proxy.address, timeout=0.5, on_retry=healing(proxy, failures)) as client:
        fund(client)
        reserved = client.reserve("acme", "ann", "enrichment", 10)
        assert isinstance(reserved, Reserved)
        proxy.lose_answers()
        # No ids given: the ones made for the call are resent by the retry.
        result = client.commit_batch(reserved.reservation_id, [BatchItem(2), BatchItem(3), BatchItem(1)])

        assert [item for item in result.items if not isinstance(item, ItemCommitted)] == []
        assert [item.held for item in result.items if isinstance(item, ItemCommitted)] == [8, 5, 4]
        assert result.charged == 6
        assert failures and failures[0].code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert {error.item_ids for error in failures} == {result.item_ids}
        reservation = client.get_reservation(reserved.reservation_id)
        assert (reservation.committed, reservation.commit_count, reservation.held) == (6, 3, 4)


def test_a_reserve_lost_to_a_crash_is_answered_by_the_restarted_sidecar(
    sidecar: Sidecar, proxy: LossyProxy
) -> None:
    restarts: list[CreditError] = []

    def on_retry(error: CreditError, attempt: int, delay: float) -> None:
        if not restarts:
            assert proxy.lost.is_set()
            sidecar.kill()
            sidecar.start()  # the same ledger database (and Redis), a new port
            proxy.heal(sidecar.address)
        restarts.append(error)

    with CreditClient(proxy.address, timeout=0.5, on_retry=on_retry) as client:
        fund(client)
        proxy.lose_answers()
        reserved = client.reserve("acme", "ann", "enrichment", 25, labels={"batch": "7"})

        assert isinstance(reserved, Reserved) and reserved.amount == 25
        assert restarts and restarts[0].request_id == reserved.request_id
        listed = client.admin.list_reservations("acme").reservations
        assert [(r.reservation_id, r.reserved) for r in listed] == [(reserved.reservation_id, 25)]
        assert client.get_balance("acme").totals.held == 25


async def test_async_retry_after_a_frozen_sidecar_reuses_the_id(sidecar: Sidecar) -> None:
    failures: list[CreditError] = []

    def on_retry(error: CreditError, attempt: int, delay: float) -> None:
        failures.append(error)
        sidecar.resume()

    async with AsyncCreditClient(sidecar.address, timeout=0.5, on_retry=on_retry) as client:
        await afund(client)
        reserved = await client.reserve("acme", "ann", "email", 5)
        assert isinstance(reserved, Reserved)
        sidecar.pause()
        committed = await client.commit(reserved.reservation_id, 2, final=True)

        assert isinstance(committed, Committed) and (committed.charged, committed.returned) == (2, 3)
        assert [type(e) for e in failures] == [DeadlineExceeded]
        assert failures[0].request_id == committed.request_id
        reservation = await client.get_reservation(reserved.reservation_id)
        assert (reservation.state, reservation.committed, reservation.commit_count) == (
            ReservationState.COMMITTED,
            2,
            1,
        )


async def test_async_commit_whose_answer_was_lost_is_applied_once(sidecar: Sidecar, proxy: LossyProxy) -> None:
    def on_retry(error: CreditError, attempt: int, delay: float) -> None:
        assert proxy.lost.is_set()
        proxy.heal()

    async with AsyncCreditClient(proxy.address, timeout=0.5, on_retry=on_retry) as client:
        await afund(client)
        async with client.hold("acme", "ann", "waterfall", 6) as hold:
            proxy.lose_answers()
            first = await hold.commit(2, business_key="contact:1:email")
            assert isinstance(first, Committed) and first.charged == 2
        reservation = await client.get_reservation(hold.reservation_id)
        assert (reservation.committed, reservation.commit_count, reservation.returned) == (2, 1, 4)


def test_errors_that_retrying_cannot_fix_are_raised_at_once(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar()
    retried: list[CreditError] = []
    with CreditClient(sidecar.address, on_retry=lambda e, a, d: retried.append(e)) as client:
        with pytest.raises(CreditError) as raised:
            client.reserve("nobody", "ann", "email", 1)
    assert raised.value.code is grpc.StatusCode.NOT_FOUND and raised.value.attempts == 1
    assert retried == []
