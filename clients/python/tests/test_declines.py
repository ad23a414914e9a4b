"""Declines are values the caller branches on, with the figures that explain them."""

from __future__ import annotations

from credit_sidecar import (
    CreditClient,
    Declined,
    Extended,
    Outcome,
    Released,
    Reserved,
    ReservationState,
    Scope,
    Sku,
    TrialStarted,
)
from helpers import fund


def test_user_limit_decline_names_the_user_and_what_remains(client: CreditClient) -> None:
    fund(client)
    client.admin.set_user_limit("acme", "ann", 5)
    result = client.reserve("acme", "ann", "email", Sku("email.verified", 6))
    match result:
        case Declined(outcome=Outcome.USER_LIMIT_REACHED, scope=Scope.USER) as declined:
            assert (declined.scope_id, declined.user_remaining, declined.requested) == ("ann", 5, 6)
        case _:
            raise AssertionError(f"expected a user-limit decline, got {result}")
    assert isinstance(client.reserve("acme", "bob", "email", Sku("email.verified", 6)), Reserved)


def test_a_retried_decline_stays_declined_after_credit_arrives(client: CreditClient) -> None:
    fund(client, credits=10)
    first = client.reserve("acme", "ann", "enrichment", 20, request_id="batch-42")
    assert isinstance(first, Declined) and first.request_id == "batch-42"
    client.admin.grant("acme", 100)
    again = client.reserve("acme", "ann", "enrichment", 20, request_id="batch-42")
    assert again == first, "a retry gets the first answer, so it never succeeds later by accident"
    assert isinstance(client.reserve("acme", "ann", "enrichment", 20), Reserved)


def test_commit_extend_and_release_declines_carry_the_reservation(client: CreditClient) -> None:
    fund(client, credits=30)
    reserved = client.reserve("acme", "ann", "ai", Sku("ai.research", 2))
    assert isinstance(reserved, Reserved) and reserved.amount == 10

    too_much = client.commit(reserved.reservation_id, 11)
    assert isinstance(too_much, Declined) and too_much.outcome is Outcome.EXCEEDS_HOLD
    assert too_much.held == 10 and too_much.reservation is not None and too_much.reservation.held == 10

    no_credit = client.extend(reserved.reservation_id, 25, ttl_ms=60_000)
    assert isinstance(no_credit, Declined) and no_credit.outcome is Outcome.INSUFFICIENT_CREDIT
    assert (no_credit.requested, no_credit.available) == (25, 20)
    assert no_credit.reservation is not None and no_credit.reservation.deadline_unix_ms == reserved.deadline_unix_ms

    grown = client.extend(reserved.reservation_id, 5)
    assert isinstance(grown, Extended) and (grown.added, grown.held) == (5, 15)

    assert isinstance(client.release(reserved.reservation_id), Released)
    closed = client.release(reserved.reservation_id)
    assert isinstance(closed, Declined) and closed.outcome is Outcome.RESERVATION_CLOSED
    assert closed.reservation_state is ReservationState.RELEASED
    late = client.commit(reserved.reservation_id, 1)
    assert isinstance(late, Declined) and late.outcome is Outcome.RESERVATION_CLOSED


def test_a_partial_reserve_is_declined_when_not_even_the_minimum_fits(client: CreditClient) -> None:
    fund(client, credits=150)
    result = client.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 700), min_quantity=100)
    match result:
        case Declined(outcome=Outcome.INSUFFICIENT_CREDIT, scope=Scope.ACCOUNT) as declined:
            # requested is the minimum (100 minutes at 2 credits), not the 1400 asked for at most.
            assert (declined.requested, declined.available) == (200, 150)
        case _:
            raise AssertionError(f"expected an insufficient-credit decline, got {result}")
    assert client.get_balance("acme").totals.held == 0

    client.admin.set_user_limit("acme", "ann", 40)
    by_limit = client.reserve("acme", "ann", "enrichment", 100, min_quantity=50)
    assert isinstance(by_limit, Declined) and by_limit.outcome is Outcome.USER_LIMIT_REACHED
    assert (by_limit.scope_id, by_limit.requested, by_limit.user_remaining) == ("ann", 50, 40)


def test_a_partial_extend_adds_the_units_that_fit_then_is_declined(client: CreditClient) -> None:
    fund(client, credits=30)
    reserved = client.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 5))
    assert isinstance(reserved, Reserved) and (reserved.quantity, reserved.amount) == (5, 10)

    grown = client.extend(reserved.reservation_id, Sku("dialer.minute.de", 15), min_quantity=1)
    assert isinstance(grown, Extended)
    assert (grown.added_quantity, grown.added, grown.held) == (10, 20, 30)

    none_left = client.extend(reserved.reservation_id, Sku("dialer.minute.de", 15), min_quantity=1)
    assert isinstance(none_left, Declined) and none_left.outcome is Outcome.INSUFFICIENT_CREDIT
    assert (none_left.requested, none_left.available) == (2, 0)
    assert none_left.reservation is not None and none_left.reservation.held == 30

    deadline_only = client.extend(reserved.reservation_id, ttl_ms=60_000)
    assert isinstance(deadline_only, Extended) and (deadline_only.added, deadline_only.added_quantity) == (0, 0)


def test_a_second_trial_is_declined(client: CreditClient) -> None:
    first = client.admin.start_trial("newco", create_account=True)
    assert isinstance(first, TrialStarted) and first.totals.available == 100
    second = client.admin.start_trial("newco")
    assert isinstance(second, Declined) and second.outcome is Outcome.TRIAL_ALREADY_USED
    assert not second.ok and first.ok


def test_quote_answers_without_holding(client: CreditClient) -> None:
    fund(client, credits=7)
    quote = client.quote("acme", Sku("dialer.minute.de", 5), category="dialer")
    assert (quote.fits, quote.outcome) == (False, Outcome.INSUFFICIENT_CREDIT)
    assert (quote.amount, quote.available, quote.units_that_fit) == (10, 7, 3)
    assert client.get_balance("acme").totals.held == 0
