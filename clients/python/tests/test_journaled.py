"""OUTCOME_JOURNALED (README "Outage journal"): a Commit the sidecar's outage journal took while
Redis was away is a success without figures (``Journaled``), not a decline.

The conversion and the hold helpers' bookkeeping are tested on answers scripted by hand (no
server); the last test journals a dialer's minute for real, on the Redis engine with a Redis that
is killed and restarted."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import StartSidecar
from google.protobuf.message import Message
from helpers import fund
from servers import RedisServer

from credit_sidecar import (
    AsyncCreditClient,
    BatchItem,
    Committed,
    CreditClient,
    Declined,
    Journaled,
    Outcome,
    ReservationState,
    Sku,
    _convert,
    _ops,
)
from credit_sidecar.pb.credits.v1 import authorizer_pb2, types_pb2

RESERVATION = "acme/7"
MINUTE = Sku("dialer.minute.de")


def _journaled() -> authorizer_pb2.CommitResponse:
    """What the sidecar answers for a journaled commit: the outcome and nothing else."""
    return authorizer_pb2.CommitResponse(outcome=types_pb2.OUTCOME_JOURNALED)


def _reservation(committed: int, held: int, state: int = types_pb2.RESERVATION_STATE_HELD) -> types_pb2.Reservation:
    return types_pb2.Reservation(
        reservation_id=RESERVATION,
        account_id="acme",
        user_id="ann",
        category="dialer",
        state=state,  # type: ignore[arg-type]
        reserved=6,
        committed=committed,
        held=held,
        deadline_unix_ms=2_000_000_000_000,
    )


def _committed(charged: int, committed: int, held: int, final: bool = False) -> authorizer_pb2.CommitResponse:
    state = types_pb2.RESERVATION_STATE_COMMITTED if final else types_pb2.RESERVATION_STATE_HELD
    return authorizer_pb2.CommitResponse(
        outcome=types_pb2.OUTCOME_OK,
        charged=charged,
        held=0 if final else held,
        returned=held if final else 0,
        reservation=_reservation(committed, 0 if final else held, state),
    )


def _exceeds_hold(committed: int, held: int) -> authorizer_pb2.CommitResponse:
    return authorizer_pb2.CommitResponse(
        outcome=types_pb2.OUTCOME_EXCEEDS_HOLD,
        held=held,
        reservation=_reservation(committed, held),
        decline=types_pb2.Decline(
            scope=types_pb2.SCOPE_RESERVATION,
            scope_id=RESERVATION,
            requested=10,
            available=held,
            held=held,
            reservation_state=types_pb2.RESERVATION_STATE_HELD,
            message="commit of 10 exceeds the 2 held",
        ),
    )


_RESERVED = authorizer_pb2.ReserveResponse(
    outcome=types_pb2.OUTCOME_OK,
    reservation_id=RESERVATION,
    amount=6,
    quantity=3,
    deadline_unix_ms=2_000_000_000_000,
    available=994,
)
_RELEASED = authorizer_pb2.ReleaseResponse(outcome=types_pb2.OUTCOME_OK, returned=2)


class _Script:
    """Stands in for the generated stubs: answers each method's calls from a list, in order, and
    records the calls (method, request)."""

    def __init__(self, answers: dict[str, list[Message]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Message]] = []

    def answer(self, method: str, request: Message) -> Message:
        self.calls.append((method, request))
        return self.answers[method].pop(0)

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


class _Stub:
    def __init__(self, script: _Script) -> None:
        self._script = script

    def __getattr__(self, method: str) -> Callable[..., Message]:
        return lambda request, **_: self._script.answer(method, request)


class _AsyncStub:
    def __init__(self, script: _Script) -> None:
        self._script = script

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Message]]:
        async def call(request: Message, **_: object) -> Message:
            return self._script.answer(method, request)

        return call


def _scripted(answers: dict[str, list[Message]]) -> tuple[CreditClient, _Script]:
    script = _Script(answers)
    client = CreditClient("127.0.0.1:1")  # never connects: every call is answered by the script
    client._stubs = {"authorizer": _Stub(script), "admin": _Stub(script)}
    return client, script


def test_the_outcome_enum_has_every_proto_value() -> None:
    assert {Outcome(value).name: value for value in types_pb2.Outcome.values()} == {
        name.removeprefix("OUTCOME_"): value for name, value in types_pb2.Outcome.items()
    }
    assert Outcome(9) is Outcome.JOURNALED


def test_a_journaled_commit_response_is_journaled_not_declined() -> None:
    result = _convert.committed(_journaled(), "minute-2", RESERVATION)
    assert not isinstance(result, Declined)
    assert result == Journaled(reservation_id=RESERVATION, request_id="minute-2")
    assert result.ok and result.journaled
    applied = _convert.committed(_committed(2, 4, 2), "minute-2", RESERVATION)
    assert isinstance(applied, Committed) and applied.ok and not applied.journaled
    declined = _convert.committed(_exceeds_hold(4, 2), "minute-2", RESERVATION)
    assert isinstance(declined, Declined) and not declined.ok and not declined.journaled


def test_a_journaled_batch_reads_each_item_as_journaled_under_its_item_id() -> None:
    response = authorizer_pb2.CommitBatchResponse(
        items=[
            authorizer_pb2.CommitItemResult(item_id="row-1", outcome=types_pb2.OUTCOME_JOURNALED),
            authorizer_pb2.CommitItemResult(item_id="row-2", outcome=types_pb2.OUTCOME_JOURNALED),
        ]
    )
    batch = _ops.commit_batch(RESERVATION, [BatchItem(1, item_id="row-1"), BatchItem(2, item_id="row-2")])
    result = batch.read(response)
    assert result.items == (Journaled(RESERVATION, "row-1"), Journaled(RESERVATION, "row-2"))
    assert result.ok and result.declined == () and result.item_ids == ("row-1", "row-2")


def test_a_commit_op_reads_journaled_with_its_reservation_and_request_id() -> None:
    op = _ops.commit(RESERVATION, MINUTE, False, "", None, "minute-2")
    assert op.read(_journaled()) == Journaled(RESERVATION, "minute-2")
    fresh = _ops.commit(RESERVATION, MINUTE, True, "", None, None)
    result = fresh.read(_journaled())
    assert isinstance(result, Journaled) and result.request_id == fresh.request_id


def test_client_commit_returns_journaled() -> None:
    client, script = _scripted({"Commit": [_journaled()]})
    with client:
        result = client.commit(RESERVATION, MINUTE, request_id="minute-2")
    assert result == Journaled(RESERVATION, "minute-2")
    assert script.methods() == ["Commit"], "a journaled commit is an answer: nothing is retried"


def test_a_journaled_minute_does_not_stop_a_dialer_hold() -> None:
    client, script = _scripted(
        {
            "Reserve": [_RESERVED],
            # minute 1 applied; minute 2 journaled; minute 3 (Redis back: minute 2 applied first);
            # minute 2 sent again answers what it did; the final minute.
            "Commit": [
                _committed(2, 2, 4),
                _journaled(),
                _committed(2, 6, 0),
                _committed(2, 6, 0),
                _committed(0, 6, 0, final=True),
            ],
        }
    )
    with client, client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 3)) as hold:
        assert isinstance(hold.commit(MINUTE), Committed)
        journaled = hold.commit(MINUTE, request_id="minute-2")
        assert isinstance(journaled, Journaled) and journaled.request_id == "minute-2"
        # The call goes on; no figure is known, so none changes, and the commit is listed.
        assert (hold.committed, hold.held, hold.closed) == (2, 4, False)
        assert hold.journaled == (journaled,)
        third = hold.commit(MINUTE)
        assert isinstance(third, Committed)
        assert (hold.committed, hold.held) == (6, 0), "the reservation's figures include the journaled minute"
        again = hold.commit(MINUTE, request_id="minute-2")
        assert isinstance(again, Committed) and again.charged == 2
        assert hold.committed == 6, "an answer from memory is not counted twice"
        assert not hold.journaled
        assert isinstance(hold.commit(0, final=True), Committed)
    assert hold.closed and script.methods() == ["Reserve", *["Commit"] * 5]


def test_a_journaled_final_commit_closes_the_hold_without_a_release() -> None:
    client, script = _scripted({"Reserve": [_RESERVED], "Commit": [_journaled()]})
    with client, client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 3)) as hold:
        result = hold.commit(MINUTE, final=True, request_id="last")
        assert isinstance(result, Journaled)
        assert hold.closed and hold.committed == 0 and hold.journaled == (result,)
    assert script.methods() == ["Reserve", "Commit"], "no Release follows a journaled final commit"
    assert hold.release_result is None and hold.release_error is None


def test_a_journaled_final_commit_declined_when_applied_reopens_the_hold() -> None:
    client, script = _scripted(
        {"Reserve": [_RESERVED], "Commit": [_journaled(), _exceeds_hold(4, 2)], "Release": [_RELEASED]}
    )
    with client, client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 3)) as hold:
        assert isinstance(hold.commit(10, final=True, request_id="last"), Journaled)
        assert hold.closed
        learned = hold.commit(10, final=True, request_id="last")  # sent again once Redis is back
        assert isinstance(learned, Declined) and learned.outcome is Outcome.EXCEEDS_HOLD
        assert learned.reservation is not None and learned.reservation.state is ReservationState.HELD
        assert not hold.closed and hold.journaled == () and (hold.committed, hold.held) == (4, 2)
    assert script.methods() == ["Reserve", "Commit", "Commit", "Release"], "leaving released what it held"
    assert hold.closed


async def test_the_async_hold_treats_journaled_as_success() -> None:
    script = _Script({"Reserve": [_RESERVED], "Commit": [_committed(2, 2, 4), _journaled(), _journaled()]})
    async with AsyncCreditClient("127.0.0.1:1") as client:
        client._stubs = {"authorizer": _AsyncStub(script), "admin": _AsyncStub(script)}
        async with client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 3)) as hold:
            assert isinstance(await hold.commit(MINUTE), Committed)
            minute = await hold.commit(MINUTE, request_id="minute-2")
            assert isinstance(minute, Journaled) and not hold.closed and hold.committed == 2
            last = await hold.commit(MINUTE, final=True, request_id="last")
            assert isinstance(last, Journaled) and hold.closed
            assert [j.request_id for j in hold.journaled] == ["minute-2", "last"]
    assert script.methods() == ["Reserve", "Commit", "Commit", "Commit"]


@pytest.mark.parametrize("engine", ["redis"])
def test_a_minute_committed_while_redis_is_down_is_journaled_then_applied(
    durable_redis: RedisServer, start_sidecar: StartSidecar, tmp_path: Path
) -> None:
    config = tmp_path / "journal.toml"
    config.write_text(f'journal_categories = ["dialer"]\njournal_path = "{tmp_path / "journal.db"}"\n')
    sidecar = start_sidecar("--config", str(config), "--redis-timeout-ms", "500", redis=durable_redis)
    with CreditClient(sidecar.address) as client:
        fund(client)
        with client.hold("acme", "ann", "dialer", Sku("dialer.minute.de", 3), ttl_ms=120_000) as hold:
            first = hold.commit(MINUTE)
            assert isinstance(first, Committed) and first.charged == 2

            durable_redis.kill()
            journaled = hold.commit(MINUTE, request_id="minute-2")
            assert journaled == Journaled(hold.reservation_id, "minute-2"), journaled
            assert (hold.committed, hold.closed, hold.journaled) == (2, False, (journaled,))
            again = client.commit(hold.reservation_id, MINUTE, request_id="minute-2")
            assert again == journaled, "sent again while Redis is down: the same answer"

            durable_redis.restart()
            # Sent again until the sidecar has applied it (it answers JOURNALED until then).
            bound = time.monotonic() + 30
            applied = hold.commit(MINUTE, request_id="minute-2")
            while isinstance(applied, Journaled) and time.monotonic() < bound:
                time.sleep(0.1)
                applied = hold.commit(MINUTE, request_id="minute-2")
            assert isinstance(applied, Committed), applied
            assert applied.charged == 2 and applied.held == 2
            assert (hold.committed, hold.held, hold.journaled) == (4, 2, ())
            last = hold.commit(MINUTE, final=True)
            assert isinstance(last, Committed) and last.charged == 2
        assert hold.closed and hold.release_result is None
        totals = client.get_balance("acme").totals
        assert (totals.spent, totals.held) == (6, 0), "each minute charged once"
