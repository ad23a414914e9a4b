"""The asyncio client (``grpc.aio``): the same calls, results, errors and retries as
:class:`credit_sidecar.CreditClient`, awaited; its hold extends in a task instead of a thread."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio as grpc_aio

from . import _channel, _ops
from ._channel import DEFAULT_ADDRESS, Token
from .errors import CreditError, from_rpc_error
from .hold import HoldBase, KeepAlive
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
from .watch import AsyncAccountWatch

T = TypeVar("T")


class AsyncCreditClient:
    """The asyncio twin of :class:`credit_sidecar.CreditClient` (same arguments, same rules).

    Create it inside the event loop that uses it (``grpc.aio`` channels belong to one loop).
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
            self._channel = grpc_aio.insecure_channel(where.address, options=where.options)
        else:
            self._channel = grpc_aio.secure_channel(where.address, where.credentials, options=where.options)
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
        self.admin = AsyncAdmin(self)

    async def _run(self, op: _ops.Op[T], timeout: float | None = None) -> T:
        """Sends ``op`` until it is answered or the retry policy gives up (then raises)."""
        method = getattr(self._stubs[op.service], op.method)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await method(
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
            await asyncio.sleep(delay)

    def _stream(self, op: _ops.Op[Any]) -> Any:
        """Starts the server stream ``op`` once, with the token and ``wait_for_ready`` but no
        deadline and no retries (a stream lives as long as its reader wants it)."""
        method = getattr(self._stubs[op.service], op.method)
        return method(op.request, metadata=_channel.metadata(self._token), wait_for_ready=self._wait_for_ready)

    async def reserve(
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
        """See :meth:`credit_sidecar.CreditClient.reserve` (``min_quantity``: a partial hold)."""
        op = _ops.reserve(account_id, user_id, category, cost, ttl_ms, labels, request_id, min_quantity)
        return await self._run(op, timeout)

    async def commit(
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
        """See :meth:`credit_sidecar.CreditClient.commit` (``Journaled`` is a success too)."""
        return await self._run(_ops.commit(reservation_id, cost, final, business_key, labels, request_id), timeout)

    async def commit_batch(
        self, reservation_id: str, items: Iterable[BatchItem], *, timeout: float | None = None
    ) -> BatchCommitted:
        """See :meth:`credit_sidecar.CreditClient.commit_batch`: up to 100 items, one atomic step."""
        return await self._run(_ops.commit_batch(reservation_id, items), timeout)

    async def extend(
        self,
        reservation_id: str,
        cost: Cost | None = None,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Extended | Declined:
        """See :meth:`credit_sidecar.CreditClient.extend` (``min_quantity``: a partial extension)."""
        return await self._run(_ops.extend(reservation_id, cost, ttl_ms, request_id, min_quantity), timeout)

    async def release(
        self, reservation_id: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Released | Declined:
        return await self._run(_ops.release(reservation_id, request_id), timeout)

    async def charge(
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
        op = _ops.charge(account_id, user_id, category, cost, business_key, labels, request_id)
        return await self._run(op, timeout)

    async def quote(
        self, account_id: str, cost: Cost, *, user_id: str = "", category: str = "", timeout: float | None = None
    ) -> Quote:
        return await self._run(_ops.quote(account_id, cost, user_id, category), timeout)

    async def get_balance(self, account_id: str, *, user_id: str = "", timeout: float | None = None) -> Balance:
        return await self._run(_ops.get_balance(account_id, user_id), timeout)

    async def get_reservation(self, reservation_id: str, *, timeout: float | None = None) -> Reservation:
        return await self._run(_ops.get_reservation(reservation_id), timeout)

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
    ) -> AsyncHold:
        """``async with client.hold(...) as hold:`` — see :mod:`credit_sidecar.hold`; with
        ``min_quantity``, a partial hold of ``hold.reserved.quantity`` units."""
        reserve = _ops.reserve(account_id, user_id, category, cost, ttl_ms, labels, request_id, min_quantity)
        return AsyncHold(self, reserve, cost, keep_alive)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncCreditClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


class AsyncAdmin:
    """CreditAdmin calls, awaited (see :class:`credit_sidecar.client.Admin`)."""

    def __init__(self, client: AsyncCreditClient) -> None:
        self._client = client

    async def set_plan(
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
        op = _ops.set_plan(account_id, plan_credits, period, anchor_unix_ms, addon_credits, request_id)
        return await self._client._run(op, timeout)

    async def grant(
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
        return await self._client._run(op, timeout)

    async def start_trial(
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
        return await self._client._run(op, timeout)

    async def set_user_limit(
        self,
        account_id: str,
        user_id: str,
        limit: int | None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.SetUserLimitResponse:
        return await self._client._run(_ops.set_user_limit(account_id, user_id, limit, request_id), timeout)

    async def set_category_budget(
        self,
        account_id: str,
        category: str,
        budget: int | None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> admin_pb2.SetCategoryBudgetResponse:
        return await self._client._run(_ops.set_category_budget(account_id, category, budget, request_id), timeout)

    async def get_account(self, account_id: str, *, timeout: float | None = None) -> admin_pb2.GetAccountResponse:
        return await self._client._run(_ops.get_account(account_id), timeout)

    async def list_reservations(
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
        return await self._client._run(op, timeout)

    async def get_usage(
        self,
        account_id: str,
        *,
        cycle_start_unix_ms: int = 0,
        reservation_id: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.GetUsageResponse:
        return await self._client._run(_ops.get_usage(account_id, cycle_start_unix_ms, reservation_id), timeout)

    async def get_account_history(
        self, account_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> admin_pb2.GetAccountHistoryResponse:
        """A page of the account's changes from the durable ledger, newest first (see
        :meth:`credit_sidecar.client.Admin.get_account_history`)."""
        return await self._client._run(_ops.get_account_history(account_id, page_size, page_token), timeout)

    async def set_alert_thresholds(
        self, account_id: str, thresholds: Iterable[AlertThreshold], *, timeout: float | None = None
    ) -> list[AlertThreshold]:
        """See :meth:`credit_sidecar.client.Admin.set_alert_thresholds` (replaces the set)."""
        return await self._client._run(_ops.set_alert_thresholds(account_id, thresholds), timeout)

    async def list_alerts(
        self, account_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AlertsPage:
        """See :meth:`credit_sidecar.client.Admin.list_alerts` (newest first, paged)."""
        return await self._client._run(_ops.list_alerts(account_id, page_size, page_token), timeout)

    def watch_account(self, account_id: str, interval_ms: int = 0) -> AsyncAccountWatch:
        """See :meth:`credit_sidecar.client.Admin.watch_account`. Not awaited: it returns an
        async iterator and async context manager at once; ``async with`` waits for the first
        update (a refused watch raises there), a bare ``async for`` raises from its first step::

            async with client.admin.watch_account("acme") as watch:
                async for update in watch:
                    show(update.account.totals)
        """
        op = _ops.watch_account(account_id, interval_ms)
        return AsyncAccountWatch(self._client._stream(op), op.read)


class AsyncHold(HoldBase):
    """``async with client.hold(...) as hold:`` — the asyncio twin of
    :class:`credit_sidecar.hold.Hold`; the keep-alive runs as a task of the same loop."""

    def __init__(
        self,
        client: AsyncCreditClient,
        reserve: _ops.Op[Reserved | Declined],
        cost: Cost,
        keep_alive: KeepAlive | None,
    ) -> None:
        super().__init__(reserve, cost, keep_alive)
        self._client = client
        self._extender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncHold:
        self._entered(await self._client._run(self._reserve))
        if self.keep_alive is not None:
            self._extender = asyncio.create_task(self._keep_extending(), name=f"credit-hold-{self.reservation_id}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._extender is not None:
            self._extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._extender
        if not self.closed:
            try:
                await self.release()
            except CreditError as error:
                self._release_failed(error)

    async def commit(
        self,
        cost: Cost | None = None,
        *,
        final: bool = False,
        business_key: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Committed | Journaled | Declined:
        """See :meth:`credit_sidecar.hold.Hold.commit`."""
        op = _ops.commit(self.reservation_id, self._unit_cost(cost), final, business_key, labels, request_id)
        result = await self._client._run(op, timeout)
        self._commit_answered(result, final)
        return result

    async def commit_batch(self, items: Iterable[BatchItem], *, timeout: float | None = None) -> BatchCommitted:
        """See :meth:`credit_sidecar.hold.Hold.commit_batch`."""
        result = await self._client._run(_ops.commit_batch(self.reservation_id, items), timeout)
        self._batch_answered(result)
        return result

    async def extend(
        self,
        cost: Cost | None = None,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Extended | Declined:
        op = _ops.extend(self.reservation_id, cost, ttl_ms, request_id, min_quantity)
        result = await self._client._run(op, timeout)
        self._extend_answered(result, background=False)
        return result

    async def release(self, *, request_id: str | None = None, timeout: float | None = None) -> Released | Declined:
        result = await self._client._run(_ops.release(self.reservation_id, request_id), timeout)
        self.release_result = result
        self._release_answered(result)
        return result

    async def _keep_extending(self) -> None:
        keep_alive = self.keep_alive
        assert keep_alive is not None
        while True:
            await asyncio.sleep(keep_alive.every)
            op = _ops.extend(self.reservation_id, keep_alive.cost, keep_alive.ttl_ms, None, keep_alive.min_quantity)
            try:
                result = await self._client._run(op)
            except CreditError as error:
                self._background_failed(error)
                continue
            self._extend_answered(result, background=True)
            if self._extension_declined(result):
                return
