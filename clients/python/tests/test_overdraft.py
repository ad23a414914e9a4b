"""Overdrafts (docs/rules.md "Overdraft"): work a ``fail_open_categories`` category admitted while
Redis was away is charged when Redis is back even beyond what the lots hold; the rest is owed
(``Totals.owed``, an ``overdrawn`` history entry) until the next grant repays it (a ``repaid``
entry). Conservation is then ``granted + owed == available + held + spent + expired``.

Making one for real takes a Redis outage on a fail-open sidecar (the sidecar's own tests do that,
tests/it/fail_open.rs); here the answers are built by hand (no server) — as protobuf messages and
as the bytes the sidecar writes — and only the conservation rule is checked on the real binary."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message
from helpers import fund

from credit_sidecar import Charged, CreditClient, Totals, TrialStarted, _convert
from credit_sidecar.pb.credits.v1 import admin_pb2, authorizer_pb2, types_pb2

# tests/it/fail_open.rs's outage: 45 credits spent on an account of 30, so 15 owed; then a grant of
# 100 repays them first.
OWING = types_pb2.Totals(granted=30, available=0, held=0, spent=45, expired=0, owed=15)


def _conserved(totals: Totals) -> bool:
    return totals.granted + totals.owed == totals.available + totals.held + totals.spent + totals.expired


class _Stub:
    """Stands in for a generated stub: every method answers the one message given."""

    def __init__(self, answer: Message) -> None:
        self.answer = answer

    def __getattr__(self, method: str) -> Callable[..., Message]:
        return lambda request, **_: self.answer


def _answering(answer: Message) -> CreditClient:
    client = CreditClient("127.0.0.1:1")  # never connects: every call is answered by the stub
    client._stubs = {"authorizer": _Stub(answer), "admin": _Stub(answer)}
    return client


def test_totals_carry_what_is_owed() -> None:
    totals = _convert.totals(OWING)
    assert totals == Totals(granted=30, available=0, held=0, spent=45, expired=0, owed=15)
    assert _conserved(totals)
    assert totals.granted != totals.available + totals.held + totals.spent + totals.expired, (
        "without owed, an overdrawn account does not add up"
    )


def test_owed_defaults_to_zero_for_totals_built_without_it() -> None:
    assert Totals(100, 60, 0, 40, 0).owed == 0
    assert _convert.totals(types_pb2.Totals(granted=100, available=60, spent=40)).owed == 0


def test_balance_and_trial_totals_carry_owed() -> None:
    with _answering(authorizer_pb2.GetBalanceResponse(totals=OWING)) as client:
        assert client.get_balance("acme").totals.owed == 15
    trial = _convert.trial_started(
        admin_pb2.StartTrialResponse(outcome=types_pb2.OUTCOME_OK, lot_id=2, totals=OWING), "trial-1"
    )
    assert isinstance(trial, TrialStarted) and trial.totals.owed == 15


def test_owed_is_read_from_the_sidecars_bytes() -> None:
    """Field 6 of Totals, as the sidecar puts it on the wire (granted 30, spent 45, owed 15)."""
    wire = bytes([0x08, 30, 0x20, 45, 0x30, 15])
    totals = _convert.totals(types_pb2.Totals.FromString(wire))
    assert (totals.granted, totals.spent, totals.owed) == (30, 45, 15)


def _history() -> admin_pb2.GetAccountHistoryResponse:
    """Newest first: the grant's repayment right after its lot_granted, the overdraft before."""
    return admin_pb2.GetAccountHistoryResponse(
        entries=[
            admin_pb2.HistoryEntry(
                seq=9, at_unix_ms=3_000, request_id="grant-1", repaid=admin_pb2.LotRepaid(lot_id=2, amount=15)
            ),
            admin_pb2.HistoryEntry(
                seq=8,
                at_unix_ms=3_000,
                request_id="grant-1",
                lot_granted=admin_pb2.LotGranted(lot_id=2, kind=types_pb2.LOT_KIND_ADDON, amount=100),
            ),
            admin_pb2.HistoryEntry(
                seq=7,
                at_unix_ms=2_000,
                overdrawn=admin_pb2.Overdrawn(
                    reservation_id="acme/12",
                    user_id="ann",
                    category="dialer",
                    cycle_start_unix_ms=1_767_225_600_000,
                    amount=15,
                    business_key="call:42:minute:3",
                    labels={"call": "42"},
                ),
            ),
        ],
        next_page_token="7",
    )


def test_history_reads_overdrawn_and_repaid_entries() -> None:
    # Through the wire format, as the client receives the page.
    sent = admin_pb2.GetAccountHistoryResponse.FromString(_history().SerializeToString())
    with _answering(sent) as client:
        page = client.admin.get_account_history("acme", page_size=3)
    assert [entry.WhichOneof("change") for entry in page.entries] == ["repaid", "lot_granted", "overdrawn"]
    repaid, granted, overdrawn = page.entries
    assert (repaid.seq, repaid.repaid.lot_id, repaid.repaid.amount) == (9, granted.lot_granted.lot_id, 15)
    drawn = overdrawn.overdrawn
    assert (drawn.reservation_id, drawn.user_id, drawn.category) == ("acme/12", "ann", "dialer")
    assert (drawn.cycle_start_unix_ms, drawn.amount, drawn.business_key) == (1_767_225_600_000, 15, "call:42:minute:3")
    assert dict(drawn.labels) == {"call": "42"}
    assert page.next_page_token == "7"


def test_history_entries_are_read_from_the_sidecars_bytes() -> None:
    """Fields 14 (overdrawn: amount 15) and 15 (repaid: lot 3, amount 15) of HistoryEntry."""
    overdrawn = admin_pb2.HistoryEntry.FromString(bytes([0x08, 7, 0x72, 2, 0x28, 15]))
    assert (overdrawn.seq, overdrawn.WhichOneof("change"), overdrawn.overdrawn.amount) == (7, "overdrawn", 15)
    repaid = admin_pb2.HistoryEntry.FromString(bytes([0x08, 9, 0x7A, 4, 0x08, 3, 0x10, 15]))
    assert (repaid.WhichOneof("change"), repaid.repaid.lot_id, repaid.repaid.amount) == ("repaid", 3, 15)


def test_an_account_that_owes_nothing_conserves_its_credits(client: CreditClient) -> None:
    """On the real sidecar, each engine: no outage, nothing owed, and the totals add up."""
    fund(client, credits=100)
    assert isinstance(client.charge("acme", "ann", "email", 40), Charged)
    totals = client.get_balance("acme").totals
    assert (totals.granted, totals.available, totals.spent, totals.owed) == (100, 60, 40, 0)
    assert _conserved(totals)
