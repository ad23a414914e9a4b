"""CommitBatch: up to 100 commits on one reservation in one atomic step, each under its item id and
answered on its own — through both clients and the hold helpers, on each engine."""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from credit_sidecar import (
    COMMIT_BATCH_MAX,
    AsyncCreditClient,
    BatchCommitted,
    BatchItem,
    CreditClient,
    Declined,
    ItemCommitted,
    NotFound,
    Outcome,
    RequestIdReused,
    Reserved,
    ReservationState,
    Resource,
    Scope,
    Sku,
)
from helpers import afund, fund
from servers import Sidecar

ROW = "enrichment.row"  # 1 credit a row in the default price book


def _reserve(client: CreditClient, cost: Sku | int) -> Reserved:
    reserved = client.reserve("acme", "ann", "enrichment", cost)
    assert isinstance(reserved, Reserved)
    return reserved


def _with_ids(items: list[BatchItem], result: BatchCommitted) -> list[BatchItem]:
    """The same items under the ids the first call sent them with: the same call again."""
    return [dataclasses.replace(item, item_id=item_id) for item, item_id in zip(items, result.item_ids)]


def test_a_batch_answers_each_item_on_its_own(client: CreditClient) -> None:
    fund(client, credits=100)
    reserved = _reserve(client, Sku(ROW, 5))
    items = [
        BatchItem(Sku(ROW), business_key="contact:1:email", labels={"row": "1"}),
        BatchItem(Sku(ROW), item_id="leads.csv:2", business_key="contact:2:email"),
        BatchItem(Sku(ROW), business_key="contact:1:email"),  # the same contact again: not charged
        BatchItem(Sku(ROW, 5)),  # more than is still held: declined, and the items after it apply
        BatchItem(2, labels={"row": "5"}),
    ]
    result = client.commit_batch(reserved.reservation_id, items)

    ids = result.item_ids
    # Ids were made for the items without one (distinct uuids); the caller's is kept.
    assert ids[1] == "leads.csv:2" and len(set(ids)) == 5 and all(uuid.UUID(i) for i in ids if i != ids[1])
    first, second, again, too_much, last = result.items
    assert first == ItemCommitted(ids[0], charged=1, already_charged=False, held=4)
    assert second == ItemCommitted(ids[1], charged=1, already_charged=False, held=3)
    assert again == ItemCommitted(ids[2], charged=0, already_charged=True, held=3)
    # A declined item is a Declined, its request_id the item id (the id it is remembered under).
    assert isinstance(too_much, Declined) and not too_much.ok and too_much.request_id == ids[3]
    assert (too_much.outcome, too_much.scope, too_much.scope_id) == (
        Outcome.EXCEEDS_HOLD,
        Scope.RESERVATION,
        reserved.reservation_id,
    )
    assert (too_much.requested, too_much.held, too_much.reservation) == (5, 3, None)
    assert last == ItemCommitted(ids[4], charged=2, already_charged=False, held=1)
    assert (result.charged, result.ok, result.declined) == (4, False, (too_much,))

    assert result.reservation is not None
    assert (result.reservation.state, result.reservation.committed, result.reservation.held) == (
        ReservationState.HELD,
        4,
        1,
    )
    assert result.reservation == client.get_reservation(reserved.reservation_id)
    totals = client.get_balance("acme").totals
    assert (totals.available, totals.held, totals.spent) == (95, 1, 4)


def test_the_same_batch_sent_again_gets_the_first_answers_and_charges_nothing_more(client: CreditClient) -> None:
    fund(client, credits=100)
    reserved = _reserve(client, 6)
    items = [
        BatchItem(3, business_key="contact:1:email"),
        BatchItem(2, business_key="contact:1:email"),
        BatchItem(4),
        BatchItem(1),
    ]
    first = client.commit_batch(reserved.reservation_id, items)
    assert [item.ok for item in first.items] == [True, True, False, True]
    assert (first.charged, client.get_balance("acme").totals.spent) == (4, 4)

    # Room for the declined item now: a retry still gets its first answer (a decline), and no
    # item is charged again.
    client.extend(reserved.reservation_id, 10)
    again = client.commit_batch(reserved.reservation_id, _with_ids(items, first))
    assert (again.items, again.charged) == (first.items, first.charged)
    reservation = client.get_reservation(reserved.reservation_id)
    assert (reservation.committed, reservation.commit_count, reservation.held) == (4, 3, 12)
    assert client.get_balance("acme").totals.spent == 4

    # Under a new id the declined item is a new commit.
    declined = first.items[2]
    assert isinstance(declined, Declined)
    retried = client.commit_batch(reserved.reservation_id, [items[2]])
    assert retried.ok and retried.charged == 4 and retried.item_ids != (declined.request_id,)
    assert client.get_balance("acme").totals.spent == 8


def test_an_item_id_used_with_other_figures_refuses_the_whole_batch(client: CreditClient) -> None:
    fund(client, credits=100)
    reserved = _reserve(client, 10)
    client.commit_batch(reserved.reservation_id, [BatchItem(1, item_id="row-1")])

    with pytest.raises(RequestIdReused) as raised:
        client.commit_batch(reserved.reservation_id, [BatchItem(1, item_id="row-2"), BatchItem(2, item_id="row-1")])
    error = raised.value
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert "row-1" in error.message
    assert error.item_ids == ("row-2", "row-1") and error.request_id is None
    assert not error.retryable and error.attempts == 1
    # Nothing was applied: not even row-2, which is new.
    reservation = client.get_reservation(reserved.reservation_id)
    assert (reservation.committed, reservation.commit_count) == (1, 1)
    assert client.commit_batch(reserved.reservation_id, [BatchItem(1, item_id="row-2")]).charged == 1


def test_a_batch_on_an_unknown_reservation_is_not_found(client: CreditClient) -> None:
    fund(client)
    with pytest.raises(NotFound) as raised:
        client.commit_batch("acme/999", [BatchItem(1)])
    assert raised.value.resource == Resource("reservation", "acme/999")
    assert raised.value.field == "reservation_id" and len(raised.value.item_ids) == 1


def test_a_csv_worker_commits_its_rows_in_batches_on_one_hold(client: CreditClient) -> None:
    fund(client, credits=300)
    rows = range(250)
    found = [row for row in rows if row % 5 != 0]  # 200 rows found new data
    chunks = [found[start : start + COMMIT_BATCH_MAX] for start in range(0, len(found), COMMIT_BATCH_MAX)]
    assert [len(chunk) for chunk in chunks] == [100, 100]

    with client.hold("acme", "ann", "enrichment", Sku(ROW, len(rows)), labels={"file": "leads.csv"}) as hold:

        def work(chunk: list[int]) -> BatchCommitted:
            items = [
                BatchItem(Sku(ROW), item_id=f"leads.csv:{row}", business_key=f"contact:{row}:email") for row in chunk
            ]
            return hold.commit_batch(items)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(work, chunks))
        # A worker that crashed after its call and runs its chunk again: answered from memory,
        # charged nothing, and counted once by the hold.
        rerun = work(chunks[0])
        # The same contacts under other ids (another file): already charged by their keys.
        keys = hold.commit_batch([BatchItem(Sku(ROW), business_key=f"contact:{row}:email") for row in found[:3]])
        # New rows under generated ids, then sent again under the ids the answer names.
        extra = [BatchItem(Sku(ROW), business_key=f"contact:{row}:email") for row in (0, 5)]
        fresh = hold.commit_batch(extra)
        resent = hold.commit_batch(_with_ids(extra, fresh))

    assert all(result.ok and result.charged == 100 for result in results)
    assert rerun.items == results[0].items and rerun.charged == 100
    assert keys.charged == 0 and all(isinstance(i, ItemCommitted) and i.already_charged for i in keys.items)
    assert (fresh.charged, resent.items, resent.charged) == (2, fresh.items, 2)
    assert hold.committed == 202 and hold.closed
    assert hold.release_result is not None and hold.release_result.ok
    reservation = client.get_reservation(hold.reservation_id)
    assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 202, 48)
    assert reservation.commit_count == 205
    totals = client.get_balance("acme").totals
    assert (totals.available, totals.held, totals.spent) == (98, 0, 202)


def test_a_hold_sees_its_batch_declined_once_closed(client: CreditClient) -> None:
    fund(client, credits=100)
    with client.hold("acme", "ann", "enrichment", Sku(ROW, 10)) as hold:
        done = hold.commit_batch([BatchItem(Sku(ROW, 3)), BatchItem(Sku(ROW, 8))])
        assert (hold.committed, hold.held, hold.closed) == (3, 7, False)
        client.release(hold.reservation_id)  # closed behind the hold's back
        late = hold.commit_batch([BatchItem(Sku(ROW))])
    assert [type(item) for item in done.items] == [ItemCommitted, Declined]
    assert isinstance(late.items[0], Declined) and late.items[0].outcome is Outcome.RESERVATION_CLOSED
    assert late.reservation is not None and late.reservation.state is ReservationState.RELEASED
    assert hold.closed and hold.held == 0 and hold.release_result is None, "no Release after the hold was closed"


async def test_async_client_and_hold_commit_batches(sidecar: Sidecar) -> None:
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client, credits=100)
        reserved = await client.reserve("acme", "ann", "enrichment", 5)
        assert isinstance(reserved, Reserved)
        items = [BatchItem(2, business_key="contact:1"), BatchItem(2, business_key="contact:1"), BatchItem(4)]
        result = await client.commit_batch(reserved.reservation_id, items)
        held = [(type(i), i.held) for i in result.items if isinstance(i, (ItemCommitted, Declined))]
        assert held == [(ItemCommitted, 3), (ItemCommitted, 3), (Declined, 3)]
        assert result.items[1] == ItemCommitted(result.item_ids[1], charged=0, already_charged=True, held=3)
        again = await client.commit_batch(reserved.reservation_id, _with_ids(items, result))
        assert (again.items, again.charged) == (result.items, 2)
        with pytest.raises(RequestIdReused) as raised:
            await client.commit_batch(reserved.reservation_id, [BatchItem(3, item_id=result.item_ids[0])])
        assert raised.value.item_ids == (result.item_ids[0],)
        assert (await client.get_balance("acme")).totals.spent == 2

        async with client.hold("acme", "ann", "enrichment", Sku(ROW, 30)) as hold:
            rows = [BatchItem(Sku(ROW), item_id=f"row-{n}", business_key=f"contact:{n}") for n in range(20)]
            batch = await hold.commit_batch(rows)
            rerun = await hold.commit_batch(rows)
        assert batch.ok and batch.charged == 19  # contact:1 was charged above
        assert rerun.items == batch.items and hold.committed == 19
        reservation = await client.get_reservation(hold.reservation_id)
        assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 19, 11)
