"""The blocking client (``grpc`` channels); :mod:`credit_sidecar.aio` is its asyncio twin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from . import _channel, _ops
from ._channel import DEFAULT_ADDRESS, Token
from .errors import from_rpc_error
from .hold import Hold, KeepAlive
from .pb.credits.v1 import admin_pb2, admin_pb2_grpc, authorizer_pb2_grpc
from .retry import DEFAULT_RETRY, DEFAULT_TIMEOUT, RetryHook, RetryPolicy, log_retry
from .types import (
    AlertsPage,
    AlertThreshold,
    Balance,
    BatchCommitted,
    BatchItem,
    Charged,
    Committed,
    Cost,
    Declined,
    Extended,
    GrantKind,
    Journaled,
    Period,
    Quote,
    Released,
    Reservation,
    ReservationState,
    Reserved,
    TrialStarted,
)
from .watch import AccountWatch

T = TypeVar("T")


class CreditClient:
    """A connection to one sidecar: the worker calls (Reserve, Commit, Extend, Release, Charge,
    Quote, GetBalance, GetReservation), :meth:`hold` for the flows, and :attr:`admin`.

    Every state-changing call takes an optional ``request_id``; without one a uuid4 is made.
    Either way the id is fixed before the first attempt and every retry resends it, so a call
    whose answer was lost is answered once and applied once. ``timeout`` (seconds) bounds each
    attempt; ``retry`` bounds the attempts; both can be set per call where it matters.
    Thread-safe: share one client between the threads of a worker.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: Token | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        on_retry: RetryHook | None = None,
        wait_for_ready: bool = False,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        where = _channel.target(
            address, tls=tls, ca_file=ca_file, cert_file=cert_file, key_file=key_file, options=options
        )
        if where.credentials is None:
            self._channel = grpc.insecure_channel(where.address, options=where.options)
        else:
            self._channel = grpc.secure_channel(where.address, where.credentials, options=where.options)
        # The generated gRPC stubs carry no annotations; their methods are typed by _ops.Op.
        self._stubs = {
            "authorizer": authorizer_pb2_grpc.CreditAuthorizerStub(self._channel),  # type: ignore[no-untyped-call]
            "admin": admin_pb2_grpc.CreditAdminStub(self._channel),  # type: ignore[no-untyped-call]
        }
        self._token = token
        self.timeout = timeout
        self.retry = retry
        self._on_retry = on_retry
        self._wait_for_ready = wait_for_ready
        self.admin = Admin(self)

    def _run(self, op: _ops.Op[T], timeout: float | None = None, stop: threading.Event | None = None) -> T:
        """Sends ``op`` until it is answered or the retry policy gives up (then raises).

        ``stop``, when set during a backoff, ends the retries early: the hold's background
        extender passes one so that leaving the hold never waits out a backoff.
        """
        method = getattr(self._stubs[op.service], op.method)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = method(
                    op.request,
                    timeout=self.timeout if timeout is None else timeout,
                    metadata=_channel.metadata(self._token),
                    wait_for_ready=self._wait_for_ready,
                )
                return op.read(response)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, op.request_id, attempt, op.item_ids)
            delay = self.retry.delay(error, attempt, time.monotonic() - started)
            if delay is None:
                raise error
            log_retry(op.method, error, delay)
            if self._on_retry is not None:
                self._on_retry(error, attempt, delay)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise error

    def _stream(self, op: _ops.Op[Any]) -> Any:
        """Starts the server stream ``op`` once, with the token and ``wait_for_ready`` but no
        deadline and no retries (a stream lives as long as its reader wants it)."""
        method = getattr(self._stubs[op.service], op.method)
        return method(op.request, metadata=_channel.metadata(self._token), wait_for_ready=self._wait_for_ready)

    def reserve(
        self,
        account_id: str,
        user_id: str,
        category: str,
        cost: Cost,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Reserved | Declined:
        """Holds ``cost`` for ``ttl_ms`` (0: the sidecar's default, 5 min), all or nothing.

        ``min_quantity`` N > 0 makes it a partial hold: as many whole units of ``cost`` as the
        team's credit and the user's limit leave room for (units of the SKU for a ``Sku``, credits
        for an ``int``), at least N; :attr:`Reserved.quantity` says how many. It is declined only
        when not even N fit, and the decline's ``requested`` is then N units' worth.
        """
        op = _ops.reserve(account_id, user_id, category, cost, ttl_ms, labels, request_id, min_quantity)
        return self._run(op, timeout)

    def commit(
        self,
        reservation_id: str,
        cost: Cost,
        *,
        final: bool = False,
        business_key: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Committed | Journaled | Declined:
        """Moves ``cost`` (0 allowed) from held to spent; ``final`` closes the reservation and
        returns the rest. A ``business_key`` is charged at most once per account and cycle.

        :class:`Journaled` is a success, not a decline: a sidecar with an outage journal for the
        hold's category met an unreachable Redis and will apply the commit under its request id
        when Redis answers; its figures are not known yet (send the same commit again, with the
        same ``request_id``, to learn them)."""
        return self._run(_ops.commit(reservation_id, cost, final, business_key, labels, request_id), timeout)

    def commit_batch(
        self, reservation_id: str, items: Iterable[BatchItem], *, timeout: float | None = None
    ) -> BatchCommitted:
        """Commits up to :data:`COMMIT_BATCH_MAX` (100) items on one reservation in one atomic
        step: each exactly a non-final :meth:`commit` whose request id is the item's id, answered
        on its own (:class:`ItemCommitted`, or :class:`Declined` while the other items still apply).

        Items without an ``item_id`` get a uuid4, fixed before the first attempt, so a retry of
        the batch charges nothing twice. The whole call raises, changing nothing, for bad input
        (the field names the item: ``items[3].cost.amount``), an unknown reservation
        (``NotFound``), or an item id used before with other figures (``RequestIdReused``).
        """
        return self._run(_ops.commit_batch(reservation_id, items), timeout)

    def extend(
        self,
        reservation_id: str,
        cost: Cost | None = None,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Extended | Declined:
        """Holds ``cost`` more and/or moves the deadline to at least now + ``ttl_ms``, all or
        nothing; with ``min_quantity`` N > 0 (and a ``cost``), as many whole units of ``cost`` as
        fit, at least N, as in :meth:`reserve` (:attr:`Extended.added_quantity` says how many)."""
        return self._run(_ops.extend(reservation_id, cost, ttl_ms, request_id, min_quantity), timeout)

    def release(
        self, reservation_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Released | Declined:
        """Closes the reservation and returns what it still holds."""
        return self._run(_ops.release(reservation_id, request_id), timeout)

    def charge(
        self,
        account_id: str,
        user_id: str,
        category: str,
        cost: Cost,
        *,
        business_key: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Charged | Declined:
        """Reserve and final Commit in one step, for one-shot actions."""
        return self._run(_ops.charge(account_id, user_id, category, cost, business_key, labels, request_id), timeout)

    def quote(
        self, account_id: str, cost: Cost, *, user_id: str = "", category: str = "", timeout: float | None = None
    ) -> Quote:
        """Would ``cost`` fit now, and how many units of its SKU fit? Changes nothing."""
        return self._run(_ops.quote(account_id, cost, user_id, category), timeout)

    def get_balance(self, account_id: str, *, user_id: str = "", timeout: float | None = None) -> Balance:
        return self._run(_ops.get_balance(account_id, user_id), timeout)

    def get_reservation(self, reservation_id: str, *, timeout: float | None = None) -> Reservation:
        return self._run(_ops.get_reservation(reservation_id), timeout)

    def hold(
        self,
        account_id: str,
        user_id: str,
        category: str,
        cost: Cost,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        keep_alive: KeepAlive | None = None,
    ) -> Hold:
        """A context manager around one reservation: see :class:`credit_sidecar.hold.Hold`.

        With ``min_quantity`` it is a partial hold (see :meth:`reserve`): the body runs with
        ``hold.reserved.quantity`` units, which may be fewer than ``cost`` asked for.
        """
        reserve = _ops.reserve(account_id, user_id, category, cost, ttl_ms, labels, request_id, min_quantity)
        return Hold(self, reserve, cost, keep_alive)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CreditClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Admin:
    """CreditAdmin calls (a token with the ``admin`` scope): plans, grants, trials, limits,
    budgets, alert thresholds, reads.

    Answers are the protobuf responses, except :meth:`start_trial`, whose decline is a value,
    and the alert calls (:meth:`set_alert_thresholds`, :meth:`list_alerts`), whose thresholds
    and alerts are this package's values (:mod:`credit_sidecar.types`).
    """

    def __init__(self, client: CreditClient) -> None:
        self._client = client

    def set_plan(
        self,
        account_id: str,
        plan_credits: int,
        *,
        anchor_unix_ms: int,
        period: Period = "monthly",
        addon_credits: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.SetPlanResponse:
        """Puts the account on a plan, creating it if needed. The anchor is required: a new
        anchor restarts the cycle, so it must not change by accident from one call to the next."""
        op = _ops.set_plan(account_id, plan_credits, period, anchor_unix_ms, addon_credits, request_id)
        return self._client._run(op, timeout)

    def grant(
        self,
        account_id: str,
        amount: int,
        *,
        kind: GrantKind = "addon",
        expires_unix_ms: int = 0,
        create_account: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.GrantResponse:
        op = _ops.grant(account_id, amount, kind, expires_unix_ms, create_account, request_id)
        return self._client._run(op, timeout)

    def start_trial(
        self,
        account_id: str,
        *,
        credits: int = 0,
        duration_ms: int = 0,
        create_account: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> TrialStarted | Declined:
        op = _ops.start_trial(account_id, credits, duration_ms, create_account, request_id)
        return self._client._run(op, timeout)

    def set_user_limit(
        self,
        account_id: str,
        user_id: str,
        limit: int | None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.SetUserLimitResponse:
        """Caps what ``user_id`` may hold or spend per cycle; ``None`` lifts the cap."""
        return self._client._run(_ops.set_user_limit(account_id, user_id, limit, request_id), timeout)

    def set_category_budget(
        self,
        account_id: str,
        category: str,
        budget: int | None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.SetCategoryBudgetResponse:
        """Caps what the whole team may hold or spend in ``category`` per cycle; ``None`` lifts
        the cap. A hold over it is declined ``CATEGORY_BUDGET_REACHED`` (scope ``CATEGORY``)."""
        return self._client._run(_ops.set_category_budget(account_id, category, budget, request_id), timeout)

    def get_account(self, account_id: str, *, timeout: float | None = None) -> admin_pb2.GetAccountResponse:
        return self._client._run(_ops.get_account(account_id), timeout)

    def list_reservations(
        self,
        account_id: str,
        *,
        state: ReservationState | None = None,
        page_size: int = 0,
        page_token: str = "",
        settled: bool = False,
        timeout: float | None = None,
    ) -> admin_pb2.ListReservationsResponse:
        op = _ops.list_reservations(account_id, state, page_size, page_token, settled)
        return self._client._run(op, timeout)

    def get_usage(
        self,
        account_id: str,
        *,
        cycle_start_unix_ms: int = 0,
        reservation_id: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.GetUsageResponse:
        return self._client._run(_ops.get_usage(account_id, cycle_start_unix_ms, reservation_id), timeout)

    def get_account_history(
        self, account_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.GetAccountHistoryResponse:
        """A page of the account's changes from the durable ledger, newest first; pass the
        response's ``next_page_token`` for the next (older) page. The entries are the protobuf
        ``HistoryEntry`` messages: ``entry.WhichOneof("change")`` names each one's kind
        (``committed``, ``category_budget_set``, ``overdrawn`` and ``repaid`` for an overdraft
        and its repayment, …)."""
        return self._client._run(_ops.get_account_history(account_id, page_size, page_token), timeout)

    def set_alert_thresholds(
        self, account_id: str, thresholds: Iterable[AlertThreshold], *, timeout: float | None = None
    ) -> list[AlertThreshold]:
        """Replaces the account's alert thresholds (at most 32; an empty list clears them) and
        returns them as the sidecar stored them. Each fires at most once per billing cycle, when
        the sidecar first sees it crossed (it looks every ``alert_interval_ms``, a second by
        default): the :class:`~credit_sidecar.types.Alert` is recorded in the ledger database,
        listed by :meth:`list_alerts`, pushed to :meth:`watch_account` streams and posted to the
        configured webhooks::

            client.admin.set_alert_thresholds("acme", [
                AlertThreshold("eighty", UsedPercent(80)),
                AlertThreshold("low", AvailableBelow(100)),
                AlertThreshold("empty", Depleted()),
            ])

        A bad threshold raises ``InvalidArgument`` naming it (field ``thresholds[1].used_percent``,
        ``thresholds[0].threshold_id``, …; nothing changed); an unknown account ``NotFound``; a
        sidecar without a ledger database ``CreditError`` (FAILED_PRECONDITION, reason
        ``NOT_CONFIGURED``). It carries no request id: the call replaces the set, so a retry
        after a lost answer is safe.
        """
        return self._client._run(_ops.set_alert_thresholds(account_id, thresholds), timeout)

    def list_alerts(
        self, account_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AlertsPage:
        """The account's thresholds now and a page of the alerts they fired, newest first, each
        with its webhook deliveries; pass the page's ``next_page_token`` for the next (older) page.
        ``page_size`` 1..=1000, 0 for 100."""
        return self._client._run(_ops.list_alerts(account_id, page_size, page_token), timeout)

    def watch_account(self, account_id: str, interval_ms: int = 0) -> AccountWatch:
        """The account as :meth:`get_account` shows it, streamed: an iterator that yields an
        :class:`~credit_sidecar.types.AccountUpdate` at once, then one each time the account
        changed, looked at every ``interval_ms`` (100..=60000; 0: 1000), and one at once for
        alerts of the account that fired (in its ``alerts``; see :meth:`set_alert_thresholds`).
        See :mod:`credit_sidecar.watch`.

        Returns once the first update is in (so a refused watch raises here: ``InvalidArgument``
        with field ``interval_ms``, ``NotFound``, ``Overloaded`` beyond 64 open watches). Neither
        the client's deadline nor its retries apply; errors while streaming (``Unavailable``,
        reason ``SHUTTING_DOWN`` when the sidecar stops) raise from the iteration. Close it
        (``with``, or ``close()``) to cancel the call::

            with client.admin.watch_account("acme") as watch:
                for update in watch:
                    show(update.account.totals)
        """
        op = _ops.watch_account(account_id, interval_ms)
        return AccountWatch(self._client._stream(op), op.read)

