"""Category budgets: a per-cycle cap on one kind of work for the whole team, set and lifted by
an admin; a hold over it is declined as a value naming the category, with what it has left."""

from __future__ import annotations

import time

import pytest

from credit_sidecar import (
    CreditClient,
    Declined,
    HoldDeclined,
    NotFound,
    Outcome,
    Reserved,
    Scope,
    Sku,
)
from credit_sidecar.pb.credits.v1 import admin_pb2
from helpers import fund


def test_a_category_budget_caps_the_team_and_declines_with_its_figures(client: CreditClient) -> None:
    fund(client)  # 1000 credits
    early = client.reserve("acme", "ann", "ai", 30)
    assert isinstance(early, Reserved)

    set_ = client.admin.set_category_budget("acme", "ai", 100, request_id="budget-1")
    assert Outcome(set_.outcome) is Outcome.OK
    assert (set_.budget, set_.used, set_.remaining) == (100, 30, 70), "what the team held before counts"
    again = client.admin.set_category_budget("acme", "ai", 100, request_id="budget-1")
    assert again == set_, "the same request id is answered as before"

    # Another user of the same team: the budget is the team's, not ann's.
    result = client.reserve("acme", "bob", "ai", 71)
    match result:
        case Declined(outcome=Outcome.CATEGORY_BUDGET_REACHED, scope=Scope.CATEGORY) as declined:
            assert (declined.scope_id, declined.category_remaining) == ("ai", 70)
            assert (declined.requested, declined.available, declined.user_remaining) == (71, 970, None)
            assert "category ai of account acme reached its budget: 70 remaining" in declined.message
            assert not declined.ok
        case _:
            raise AssertionError(f"expected a category-budget decline, got {result}")
    assert client.get_balance("acme").totals.held == 30, "the decline held nothing"
    email = client.reserve("acme", "bob", "email", 71)
    assert isinstance(email, Reserved), "another category is not capped"
    assert email.reservation_id

    charged = client.charge("acme", "bob", "ai", 71)
    assert isinstance(charged, Declined) and charged.outcome is Outcome.CATEGORY_BUDGET_REACHED
    assert charged.category_remaining == 70
    with pytest.raises(HoldDeclined) as refused:
        with client.hold("acme", "bob", "ai", 71):
            raise AssertionError("the body never runs without the credits")
    assert (refused.value.declined.scope, refused.value.declined.scope_id) == (Scope.CATEGORY, "ai")

    # Quote sees the budget when given the category.
    quote = client.quote("acme", Sku("email.verified", 71), category="ai")
    assert (quote.fits, quote.outcome, quote.category_remaining) == (False, Outcome.CATEGORY_BUDGET_REACHED, 70)
    anywhere = client.quote("acme", Sku("email.verified", 71))
    assert (anywhere.fits, anywhere.category_remaining) == (True, None)

    # A partial hold takes what the budget leaves.
    partial = client.reserve("acme", "bob", "ai", 500, min_quantity=1)
    assert isinstance(partial, Reserved) and (partial.quantity, partial.amount) == (70, 70)
    nothing_left = client.extend(early.reservation_id, 1)
    assert isinstance(nothing_left, Declined) and nothing_left.outcome is Outcome.CATEGORY_BUDGET_REACHED
    assert nothing_left.category_remaining == 0 and nothing_left.reservation is not None

    # GetAccount lists each category's budget beside its use; other declines carry no figure.
    budgets = {b.category: b for b in client.admin.get_account("acme").category_budgets}
    assert (budgets["ai"].budget, budgets["ai"].used, budgets["ai"].remaining) == (100, 100, 0)
    assert not budgets["email"].HasField("budget") and budgets["email"].used == 71
    client.admin.set_user_limit("acme", "cal", 5)
    by_user = client.reserve("acme", "cal", "email", 6)
    assert isinstance(by_user, Declined) and by_user.outcome is Outcome.USER_LIMIT_REACHED
    assert by_user.category_remaining is None


def test_a_lifted_budget_no_longer_caps_and_the_ledger_records_both(client: CreditClient) -> None:
    fund(client)
    client.admin.set_category_budget("acme", "ai", 50)
    client.admin.set_category_budget("acme", "mobile", 20)
    capped = client.reserve("acme", "ann", "ai", 60)
    assert isinstance(capped, Declined) and capped.category_remaining == 50

    lifted = client.admin.set_category_budget("acme", "ai", None)
    assert Outcome(lifted.outcome) is Outcome.OK
    assert not lifted.HasField("budget") and not lifted.HasField("remaining") and lifted.used == 0
    assert isinstance(client.reserve("acme", "ann", "ai", 60), Reserved)
    quote = client.quote("acme", 60, category="ai")
    assert (quote.fits, quote.category_remaining) == (True, None)

    # From the durable ledger, once settled: the budgets in force, and every change in the history.
    usage, changes = _settled_budgets(client, count=3)
    assert dict(usage.budget_by_category) == {"mobile": 20}, "ai's budget was lifted"
    assert [(c.category, c.budget if c.HasField("budget") else None) for c in changes] == [
        ("ai", None),
        ("mobile", 20),
        ("ai", 50),
    ]


def _settled_budgets(
    client: CreditClient, count: int
) -> tuple[admin_pb2.GetUsageResponse, list[admin_pb2.CategoryBudgetChanged]]:
    """GetUsage and the history's budget changes (newest first), once settlement wrote ``count``
    of them (it lags the live state by well under a second; this bounds the wait at 10 s). Until
    the ledger settled anything of the account, its history is ``NotFound``."""
    deadline = time.monotonic() + 10
    while True:
        changes: list[admin_pb2.CategoryBudgetChanged] = []
        try:
            history = client.admin.get_account_history("acme", page_size=1000)
        except NotFound:
            history = admin_pb2.GetAccountHistoryResponse()
        for entry in history.entries:
            if entry.WhichOneof("change") == "category_budget_set":
                changes.append(entry.category_budget_set)
        if len(changes) >= count or time.monotonic() > deadline:
            return client.admin.get_usage("acme"), changes
        time.sleep(0.05)
