"""The callers' flows through the blocking client and its hold helper, on each engine."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from credit_sidecar import (
    Charged,
    Committed,
    CreditClient,
    Declined,
    HoldDeclined,
    KeepAlive,
    Outcome,
    Reserved,
    ReservationState,
    Scope,
    Sku,
)
from credit_sidecar.pb.credits.v1 import admin_pb2
from helpers import fund


def test_csv_batch_commits_rows_in_parallel_and_releases_the_rest(client: CreditClient) -> None:
    fund(client, credits=100)
    rows = range(50)
    enriched = [row for row in rows if row % 5 != 0]  # 40 rows found new, verified data

    batch = Sku("enrichment.row", len(rows))
    with client.hold("acme", "ann", "enrichment", batch, labels={"file": "leads.csv"}) as hold:
        assert client.get_balance("acme").totals.held == 50
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda row: hold.commit(business_key=f"contact:{row}:email"), enriched))
        # A row enriched twice (a re-run of part of the file) is charged once.
        again = hold.commit(business_key=f"contact:{enriched[0]}:email")

    assert all(isinstance(r, Committed) and r.charged == 1 for r in results)
    assert isinstance(again, Committed) and again.already_charged and again.charged == 0
    assert hold.committed == 40 and hold.closed
    assert hold.release_result is not None and hold.release_result.ok
    reservation = client.get_reservation(hold.reservation_id)
    assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 40, 10)
    assert reservation.labels == {"file": "leads.csv"}
    totals = client.get_balance("acme").totals
    assert (totals.available, totals.held, totals.spent) == (60, 0, 40)


def test_a_partial_reserve_holds_the_units_that_fit(client: CreditClient) -> None:
    fund(client)  # 1000 credits; a German dialer minute costs 2
    result = client.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 700), min_quantity=100)
    assert isinstance(result, Reserved)
    assert (result.quantity, result.amount, result.available) == (500, 1000, 0)
    client.release(result.reservation_id)
    # A retry gets the first answer, though all 1000 credits are available again by now.
    again = client.reserve(
        "acme", "ann", "dialer", Sku("dialer.minute.de", 700), min_quantity=100, request_id=result.request_id
    )
    assert again == result

    # A raw amount counts single credits; the user's limit bounds a partial hold as credit does.
    client.admin.set_user_limit("acme", "cal", 300)
    credits = client.reserve("acme", "cal", "enrichment", 450, min_quantity=1)
    assert isinstance(credits, Reserved) and (credits.quantity, credits.amount, credits.available) == (300, 300, 700)
    # Without min_quantity the same request is refused whole.
    whole = client.reserve("acme", "bob", "enrichment", 800)
    assert isinstance(whole, Declined) and whole.requested == 800
    everything = client.reserve("acme", "bob", "enrichment", 500)
    assert isinstance(everything, Reserved) and everything.quantity == 500


def test_a_csv_upload_runs_the_rows_that_fit_in_a_partial_hold(client: CreditClient) -> None:
    fund(client, credits=120)
    rows = range(200)
    batch = Sku("enrichment.row", len(rows))
    with client.hold("acme", "ann", "enrichment", batch, min_quantity=50) as hold:
        fitting = rows[: hold.reserved.quantity]
        assert (hold.reserved.quantity, hold.held) == (120, 120)
        done = hold.commit(Sku("enrichment.row", len(fitting) - 20))  # 20 rows found nothing new
        more = hold.extend(Sku("enrichment.row", 80), min_quantity=10)
    assert isinstance(done, Committed) and done.charged == 100
    assert isinstance(more, Declined) and (more.requested, more.available) == (10, 0)
    assert hold.closed and (hold.committed, hold.held) == (100, 0)
    totals = client.get_balance("acme").totals
    assert (totals.available, totals.spent) == (20, 100)


def test_a_partial_keep_alive_takes_the_minutes_left(client: CreditClient) -> None:
    fund(client, credits=14)
    declines: list[Declined] = []
    # Three more minutes per extension, or as many as are left (at least one).
    keep_alive = KeepAlive(
        every=0.2, ttl_ms=1000, cost=Sku("dialer.minute.de", 3), min_quantity=1, on_decline=declines.append
    )
    with client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 2), ttl_ms=1000, keep_alive=keep_alive) as hold:
        deadline = time.monotonic() + 10
        while not declines and time.monotonic() < deadline:
            time.sleep(0.05)
        held = hold.held
    # 4 held, then 6 (three minutes), then 4 (the two minutes left), then declined.
    assert (held, hold.extensions) == (14, 2)
    assert declines and (declines[0].requested, declines[0].available) == (2, 0)
    with pytest.raises(ValueError, match="needs a cost"):
        KeepAlive(every=0.2, ttl_ms=1000, min_quantity=1)
    with pytest.raises(ValueError, match="more than the cost's 3 units"):
        KeepAlive(every=0.2, ttl_ms=1000, cost=Sku("dialer.minute.de", 3), min_quantity=4)


def test_waterfall_commits_per_provider_with_business_keys(client: CreditClient) -> None:
    fund(client)
    providers = ["waterfall.provider.a", "waterfall.provider.b", "waterfall.validator"]
    worst_case = sum(client.quote("acme", Sku(sku)).amount for sku in providers)
    assert worst_case == 4  # the default price book: 1 + 2 + 1

    with client.hold("acme", "ann", "waterfall", worst_case) as hold:
        first = hold.commit(Sku("waterfall.provider.b"), business_key="contact:7:email", labels={"provider": "b"})
        # The worker retried the whole contact after a crash, with new request ids: the key
        # still charges once.
        retried = hold.commit(Sku("waterfall.provider.b"), business_key="contact:7:email", labels={"provider": "b"})
        own_key = hold.commit(0, business_key="contact:7:mobile", labels={"provider": "own-key"})

    assert isinstance(first, Committed) and first.charged == 2
    assert isinstance(retried, Committed) and retried.already_charged and retried.charged == 0
    assert isinstance(own_key, Committed) and own_key.charged == 0
    reservation = client.get_reservation(hold.reservation_id)
    assert (reservation.committed, reservation.commit_count, reservation.returned) == (2, 3, 2)
    usage = _settled_line_items(client, hold.reservation_id, 3)
    assert [(item.amount, item.labels["provider"]) for item in usage] == [(2, "b"), (0, "b"), (0, "own-key")]
    # Support's view: the account's history names the commits with their business keys.
    history = client.admin.get_account_history("acme", page_size=1000)
    keys = [entry.committed.business_key for entry in history.entries if entry.WhichOneof("change") == "committed"]
    assert {"contact:7:email", "contact:7:mobile"} <= set(keys)


def _settled_line_items(client: CreditClient, reservation_id: str, count: int) -> list[admin_pb2.LineItem]:
    """The reservation's line items from the durable ledger, once settlement wrote them (it lags
    the live state by well under a second; this bounds the wait at 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        items = list(client.admin.get_usage("acme", reservation_id=reservation_id).line_items)
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def test_dialer_hold_is_extended_in_the_background_while_the_call_lasts(client: CreditClient) -> None:
    fund(client)
    minute = Sku("dialer.minute.de", 1)  # 2 credits a minute
    keep_alive = KeepAlive(every=0.2, ttl_ms=1000, cost=minute)
    # A 1 s hold on a 2.4 s call: without the keep-alive it would expire mid-call.
    with client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 2), ttl_ms=1000, keep_alive=keep_alive) as hold:
        extender = hold._extender
        for _ in range(3):
            time.sleep(0.8)  # a "minute" of the call
            assert isinstance(hold.commit(), Committed)
        last = hold.commit(final=True)

    assert extender is not None and not extender.is_alive(), "the extender stops with the hold"
    assert isinstance(last, Committed) and last.returned > 0
    assert hold.extensions >= 5
    reservation = client.get_reservation(hold.reservation_id)
    assert (reservation.state, reservation.committed) == (ReservationState.COMMITTED, 8)
    assert reservation.reserved == 4 + 2 * hold.extensions
    extensions = hold.extensions
    time.sleep(0.5)
    assert hold.extensions == extensions, "no extension after the hold closed"
    assert client.get_balance("acme").totals.held == 0


def test_without_keep_alive_the_same_call_outlives_its_hold(client: CreditClient) -> None:
    """The control for the test above: the hold really expires when nothing extends it."""
    fund(client)
    with client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 2), ttl_ms=1000) as hold:
        time.sleep(1.3)
        late = hold.commit(final=True)
    assert isinstance(late, Declined) and late.outcome is Outcome.RESERVATION_EXPIRED
    assert late.reservation is not None and late.reservation.state is ReservationState.EXPIRED
    assert hold.closed and hold.release_result is None, "no Release is sent for an expired hold"


def test_a_failing_body_releases_the_hold_and_keeps_its_commits(client: CreditClient) -> None:
    fund(client, credits=100)
    with pytest.raises(RuntimeError, match="provider timed out"):
        with client.hold("acme", "ann", "enrichment", 30) as hold:
            hold.commit(5, business_key="row:1")
            raise RuntimeError("provider timed out")
    reservation = client.get_reservation(hold.reservation_id)
    assert (reservation.state, reservation.committed, reservation.returned) == (ReservationState.RELEASED, 5, 25)
    assert client.get_balance("acme").totals.available == 95


def test_a_declined_hold_never_runs_its_body(client: CreditClient) -> None:
    fund(client, credits=10)
    ran = threading.Event()
    with pytest.raises(HoldDeclined) as raised:
        with client.hold("acme", "ann", "enrichment", Sku("enrichment.row", 11)):
            ran.set()
    assert not ran.is_set()
    declined = raised.value.declined
    assert (declined.outcome, declined.scope, declined.scope_id) == (Outcome.INSUFFICIENT_CREDIT, Scope.ACCOUNT, "acme")
    assert (declined.requested, declined.available) == (11, 10)
    assert "10 credits available" in declined.message


def test_a_final_commit_closes_the_hold_without_a_release(client: CreditClient) -> None:
    fund(client, credits=100)
    with client.hold("acme", "ann", "api", 10) as hold:
        done = hold.commit(4, final=True)
    assert isinstance(done, Committed) and (done.charged, done.returned, done.held) == (4, 6, 0)
    assert hold.release_result is None
    assert client.get_reservation(hold.reservation_id).state is ReservationState.COMMITTED


def test_a_commit_sent_again_through_a_hold_is_counted_once(client: CreditClient) -> None:
    fund(client, credits=100)
    with client.hold("acme", "ann", "api", 10) as hold:
        first = hold.commit(4, request_id="job-7:commit")
        again = hold.commit(4, request_id="job-7:commit")  # answered from memory, not charged again
        assert again == first and hold.committed == 4
    assert client.get_reservation(hold.reservation_id).committed == 4


def test_a_hold_reserved_as_an_amount_needs_a_cost_to_commit(client: CreditClient) -> None:
    fund(client)
    with client.hold("acme", "ann", "api", 10) as hold:
        with pytest.raises(TypeError, match="give a cost"):
            hold.commit()


def test_one_shot_charge_with_a_business_key_charges_once(client: CreditClient) -> None:
    fund(client, credits=100)
    first = client.charge("acme", "ann", "phone_number", Sku("phone_number.month"), business_key="number:+4930123")
    second = client.charge("acme", "ann", "phone_number", Sku("phone_number.month"), business_key="number:+4930123")
    assert isinstance(first, Charged) and first.charged == 50 and first.available == 50
    assert isinstance(second, Charged) and second.already_charged and second.charged == 0
    declined = client.charge("acme", "ann", "mailbox", Sku("mailbox.month", 3))
    assert isinstance(declined, Declined) and (declined.requested, declined.available) == (60, 50)
