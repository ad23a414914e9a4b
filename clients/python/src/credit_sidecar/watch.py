"""``admin.watch_account``: the account streamed as it changes (CreditAdmin.WatchAccount).

A watch is one server-streaming call. It is not sent through the clients' retry policy and has
no deadline: it lives as long as the caller reads it. It opens with the account as it is, then
yields an :class:`~credit_sidecar.types.AccountUpdate` each time the sidecar, looking every
``interval_ms``, finds the account changed. Errors raise the package's exceptions, when opening
(``InvalidArgument`` with field ``interval_ms``, ``NotFound`` for an unknown account,
``Overloaded`` when the sidecar serves 64 watches already, ``Unauthenticated``,
``PermissionDenied``) and while streaming (``Unavailable``, reason ``SHUTTING_DOWN`` when the
sidecar stops, or without it when its store stops answering): none is retried here; a caller
that wants the watch to go on opens another, after ``error.retry_delay`` or a backoff.

Closing the watch (``close()``, leaving its ``with`` block, or cancelling the task that awaits
it) cancels the call, and the sidecar frees its place at once. The iteration then ends quietly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
from grpc import aio as grpc_aio

from .errors import CreditError, from_rpc_error
from .types import AccountUpdate

_Read = Callable[[Any], AccountUpdate]


class AccountWatch(Iterator[AccountUpdate]):
    """What :meth:`credit_sidecar.client.Admin.watch_account` returns: an iterator of
    :class:`~credit_sidecar.types.AccountUpdate`, already open (its first update received) and
    a context manager that closes it. Iterate it from one thread; :meth:`close` may be called
    from any thread, and ends a ``next()`` that waits for the next change."""

    def __init__(self, call: Any, read: _Read) -> None:
        self._call = call
        self._read = read
        self._lock = threading.Lock()
        self._closed = False
        self._ended = False
        self._first: AccountUpdate | None = None
        # Opening: the sidecar sends the account at once, or the error that refused the watch.
        try:
            self._first = self._receive()
        except StopIteration:
            pass  # ended without a message (not what a sidecar does): an empty iteration

    def _receive(self) -> AccountUpdate:
        error: CreditError | None = None
        try:
            return self._read(next(self._call))
        except StopIteration:
            self._ended = True
            raise
        except grpc.RpcError as rpc_error:
            self._ended = True
            if self._closed:
                raise StopIteration from None
            error = from_rpc_error(rpc_error, None, 1)
        raise error

    def __iter__(self) -> AccountWatch:
        return self

    def __next__(self) -> AccountUpdate:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._closed or self._ended:
            raise StopIteration
        return self._receive()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the stream ended (by an error too)."""
        return self._closed or (self._ended and self._first is None)

    def close(self) -> None:
        """Cancels the call; the iteration ends (an update already received is dropped).
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._first = None
        self._call.cancel()

    def __enter__(self) -> AccountWatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A watch dropped without close() is cancelled too, rather than left streaming.
        _cancel_dropped(self)


class AsyncAccountWatch(AsyncIterator[AccountUpdate]):
    """What :meth:`credit_sidecar.aio.AsyncAdmin.watch_account` returns: an async iterator of
    :class:`~credit_sidecar.types.AccountUpdate` and an async context manager.

    ``async with`` opens it (waits for the first update, so the errors that refuse a watch raise
    there) and closes it on leaving; ``async for`` over it without ``async with`` raises them
    from the first step instead. Cancelling the task that awaits the next update cancels the
    call too."""

    def __init__(self, call: Any, read: _Read) -> None:
        self._call = call
        self._read = read
        self._closed = False
        self._ended = False
        self._first: AccountUpdate | None = None

    async def _receive(self) -> AccountUpdate:
        error: CreditError | None = None
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            self._ended = True
            if self._closed and not _cancelling():
                raise StopAsyncIteration from None  # closed by another task while this one waited
            self._call.cancel()
            raise
        except grpc.RpcError as rpc_error:
            self._ended = True
            error = from_rpc_error(rpc_error, None, 1)
        else:
            if response is grpc_aio.EOF:
                self._ended = True
                raise StopAsyncIteration
            return self._read(response)
        raise error

    async def open(self) -> AsyncAccountWatch:
        """Waits for the first update (kept for the first step of the iteration), raising the
        error that refused the watch, if any. ``async with`` calls it."""
        if self._first is None and not (self._closed or self._ended):
            try:
                self._first = await self._receive()
            except StopAsyncIteration:
                pass
        return self

    def __aiter__(self) -> AsyncAccountWatch:
        return self

    async def __anext__(self) -> AccountUpdate:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._closed or self._ended:
            raise StopAsyncIteration
        return await self._receive()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the stream ended (by an error too)."""
        return self._closed or (self._ended and self._first is None)

    def close(self) -> None:
        """Cancels the call; the iteration ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._first = None
        self._call.cancel()

    async def aclose(self) -> None:
        """:meth:`close`, for ``contextlib.aclosing`` and the like."""
        self.close()

    def __del__(self) -> None:
        # grpc.aio's tasks keep its call alive after the watch is dropped: it is cancelled here.
        _cancel_dropped(self)

    async def __aenter__(self) -> AsyncAccountWatch:
        try:
            return await self.open()
        except BaseException:
            self.close()
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _cancelling() -> bool:
    """Whether the current task is being cancelled itself (Python 3.11+ can tell)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


def _cancel_dropped(watch: AccountWatch | AsyncAccountWatch) -> None:
    """Cancels the call of a watch being collected unclosed (its loop may be gone: then there is
    nothing left to cancel)."""
    call = getattr(watch, "_call", None)
    if call is None or getattr(watch, "_closed", True) or getattr(watch, "_ended", True):
        return
    try:
        call.cancel()
    except Exception:  # noqa: BLE001 (best effort, at collection)
        pass
