"""The hold helper: one reservation around one piece of work, closed whatever happens.

``with client.hold(...) as hold:`` reserves; the body commits what the work really used (per row,
per provider, per minute); leaving the block releases whatever is still held — after an exception
too, so a failed batch never keeps credits from the team until its deadline. A final commit
closes the reservation itself (and returns the rest), so no Release follows it.

A declined Reserve raises :class:`~credit_sidecar.errors.HoldDeclined` from ``__enter__``: the
body, which is the expensive work the credits pay for, never runs without them, and no caller
can forget to check a flag first.

A commit answered :class:`~credit_sidecar.types.Journaled` (the sidecar's outage journal took it
while Redis was away) is a success: the work goes on (a dialer's call is not cut), and the commit
is charged when the sidecar applies it. Its figures are not known, so it changes none of the
hold's (``committed``, ``held`` and ``deadline_unix_ms`` stay as the latest answer with figures
left them, and catch up with the next one that reports the reservation, since the sidecar applies
journaled commits before any later call on it); it is listed in :attr:`HoldBase.journaled` until
an answer to the same request id says what it did. A journaled *final* commit closes the hold as
a committed one does: leaving the block sends no Release (the commit closes the reservation when
it is applied; a Release now would only wait out the outage or, after it, be declined).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from . import _ops
from .errors import CreditError, HoldDeclined
from .types import (
    BatchCommitted,
    BatchItem,
    Committed,
    Cost,
    Declined,
    Extended,
    ItemCommitted,
    Journaled,
    Outcome,
    Released,
    Reservation,
    ReservationState,
    Reserved,
    Sku,
)

if TYPE_CHECKING:
    from .client import CreditClient

log = logging.getLogger("credit_sidecar")

_CLOSING = frozenset({Outcome.RESERVATION_CLOSED, Outcome.RESERVATION_EXPIRED})


@dataclass(frozen=True)
class KeepAlive:
    """Extends a hold in the background while the work lasts (a dialer's call).

    Every ``every`` seconds an Extend moves the deadline to now + ``ttl_ms`` and, with ``cost``,
    holds that much more (say one more minute, as each minute is committed). Make ``ttl_ms``
    several times ``every`` so a missed extension or two does not let the hold expire; if the
    caller dies, extensions stop and the hold expires by itself. ``on_decline`` hears an
    extension the sidecar declined (the team ran out of credit: time to end the call).

    Each extension is all or nothing, unless ``min_quantity`` N > 0: then it holds as many whole
    units of ``cost`` as fit, at least N (``cost=Sku("dialer.minute.de", 5), min_quantity=1``
    takes the minutes left when fewer than five are), and is declined only when not even N fit.
    """

    every: float
    ttl_ms: int
    cost: Cost | None = None
    on_decline: Callable[[Declined], None] | None = None
    min_quantity: int = 0

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise ValueError("every must be positive")
        if self.ttl_ms <= self.every * 1000:
            raise ValueError("ttl_ms must outlast the interval between extensions")
        if self.min_quantity < 0:
            raise ValueError("min_quantity must be 0 (all or nothing) or positive")
        if self.min_quantity and self.cost is None:
            raise ValueError("a partial extension (min_quantity) needs a cost to take units of")
        units = self.cost.quantity if isinstance(self.cost, Sku) else self.cost
        if units is not None and self.min_quantity > units:
            raise ValueError(f"min_quantity {self.min_quantity} is more than the cost's {units} units")


class HoldBase:
    """What sync and async holds share: the reservation's figures as the answers report them."""

    def __init__(self, reserve: _ops.Op[Reserved | Declined], cost: Cost, keep_alive: KeepAlive | None) -> None:
        self._reserve = reserve
        self._unit = Sku(cost.sku, 1) if isinstance(cost, Sku) else None
        self.keep_alive = keep_alive
        self._lock = threading.Lock()
        self._reserved: Reserved | None = None
        self.committed = 0
        """Credits charged through this hold so far: the reservation's ``committed`` as the latest
        answers report it, so a commit or batch sent again (answered from memory) is not counted
        twice."""
        self.held = 0
        """What the reservation held after the latest answer seen."""
        self.deadline_unix_ms = 0
        self.closed = False
        """Whether the reservation was closed (final commit, release, or found closed/expired)."""
        self.extensions = 0
        """Extensions made by the keep-alive."""
        self.last_extension: Extended | Declined | CreditError | None = None
        self.release_result: Released | Declined | None = None
        """The answer of the hold's Release (called, or made on leaving), if one was made."""
        self.release_error: CreditError | None = None
        """Why the Release made on leaving failed; the hold then expires at its deadline."""
        self._journaled: dict[str, tuple[Journaled, bool]] = {}
        """Commits answered JOURNALED whose result no later answer has told yet, by request id,
        with whether each was final."""

    @property
    def reserved(self) -> Reserved:
        if self._reserved is None:
            raise RuntimeError("the hold is not entered yet")
        return self._reserved

    @property
    def reservation_id(self) -> str:
        return self.reserved.reservation_id

    def _unit_cost(self, cost: Cost | None) -> Cost:
        if cost is not None:
            return cost
        if self._unit is None:
            raise TypeError("give a cost: this hold was reserved as an amount, not a SKU")
        return self._unit

    def _entered(self, result: Reserved | Declined) -> None:
        if isinstance(result, Declined):
            raise HoldDeclined(result)
        self._reserved = result
        self.held = result.amount
        self.deadline_unix_ms = result.deadline_unix_ms

    @property
    def journaled(self) -> tuple[Journaled, ...]:
        """The commits the sidecar answered JOURNALED (accepted while Redis was away, applied
        later) whose result this hold has not heard yet, oldest first: they are not counted in
        :attr:`committed`. Sending one again (``hold.commit`` with the same cost, ``final``,
        business key, labels and ``request_id``) answers JOURNALED until it is applied, then what
        it did, which takes it off this list."""
        with self._lock:
            return tuple(journaled for journaled, _ in self._journaled.values())

    def _commit_answered(self, result: Committed | Journaled | Declined, final: bool) -> None:
        with self._lock:
            if isinstance(result, Journaled):
                # Charged later, by the sidecar: no figure is known, so none changes. A final one
                # closes the reservation when it is applied, so no Release is sent on leaving.
                self._journaled.setdefault(result.request_id, (result, final))
                self.closed = self.closed or final
                return
            pending = self._journaled.pop(result.request_id, None)
            if isinstance(result, Committed):
                self._charged(result.charged, result.reservation)
                self.held = result.held
                self.closed = self.closed or final
            else:
                self._declined(result)
                # A journaled final commit declined when applied (it asked more than the hold held)
                # did not close the hold: leaving the block releases it after all.
                still_held = result.reservation is None or result.reservation.state is ReservationState.HELD
                if pending is not None and pending[1] and result.outcome not in _CLOSING and still_held:
                    self.closed = False

    def _batch_answered(self, result: BatchCommitted) -> None:
        with self._lock:
            for item in result.items:
                if isinstance(item, ItemCommitted):
                    self.held = item.held
                elif isinstance(item, Declined):
                    self._declined(item)
                # A journaled item has no figures yet: the next answer on the hold brings them.
            self._charged(result.charged, result.reservation)
            if result.reservation is not None:
                self.held = result.reservation.held
                self.deadline_unix_ms = result.reservation.deadline_unix_ms

    def _charged(self, charged: int, reservation: Reservation | None) -> None:
        """Counts a commit's charge from the reservation it reports: the reservation's total only
        grows, so answers that arrive out of order (commits from many threads) or from memory (an
        id sent again) are counted once. Without the reservation, the charge is added."""
        if reservation is None:
            self.committed += charged
        else:
            self.committed = max(self.committed, reservation.committed)

    def _extend_answered(self, result: Extended | Declined, background: bool) -> None:
        with self._lock:
            if isinstance(result, Extended):
                self.held = result.held
                self.deadline_unix_ms = result.deadline_unix_ms
                if background:
                    self.extensions += 1
            else:
                self._declined(result)
            if background:
                self.last_extension = result

    def _release_answered(self, result: Released | Declined) -> None:
        with self._lock:
            if isinstance(result, Released):
                self.held = 0
                self.closed = True
            else:
                self._declined(result)

    def _declined(self, result: Declined) -> None:
        if result.reservation is not None:
            self.committed = max(self.committed, result.reservation.committed)
            self.held = result.reservation.held
            self.deadline_unix_ms = result.reservation.deadline_unix_ms
        if result.outcome in _CLOSING:
            self.closed = True

    def _background_failed(self, error: CreditError) -> None:
        """An extension failed even after retries: the next tick tries again, and the hold's
        margin (``ttl_ms`` over ``every``) covers the gap."""
        with self._lock:
            self.last_extension = error
        log.warning("credit-sidecar: extending hold %s failed: %s", self.reservation_id, error)

    def _extension_declined(self, result: Extended | Declined) -> bool:
        """Tells the caller about a declined extension; ``True`` when extending should stop."""
        if not isinstance(result, Declined):
            return False
        if self.keep_alive is not None and self.keep_alive.on_decline is not None:
            self.keep_alive.on_decline(result)
        return result.outcome in _CLOSING

    def _release_failed(self, error: CreditError) -> None:
        """Leaving never raises for a failed Release: the work is done (or already failed with
        its own exception), and the hold's credits come back by themselves at its deadline."""
        self.release_error = error
        log.warning("credit-sidecar: releasing hold %s failed (it expires by itself): %s", self.reservation_id, error)


class Hold(HoldBase):
    """A reservation held for the duration of a ``with`` block (see the module docstring).

    Commits may come from several threads at once (a CSV batch worked in parallel).
    """

    def __init__(
        self,
        client: CreditClient,
        reserve: _ops.Op[Reserved | Declined],
        cost: Cost,
        keep_alive: KeepAlive | None,
    ) -> None:
        super().__init__(reserve, cost, keep_alive)
        self._client = client
        self._stop = threading.Event()
        self._extender: threading.Thread | None = None

    def __enter__(self) -> Hold:
        self._entered(self._client._run(self._reserve))
        if self.keep_alive is not None:
            self._extender = threading.Thread(
                target=self._keep_extending, name=f"credit-hold-{self.reservation_id}", daemon=True
            )
            self._extender.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._extender is not None:
            self._extender.join()
        if not self.closed:
            try:
                self.release()
            except CreditError as error:
                self._release_failed(error)

    def commit(
        self,
        cost: Cost | None = None,
        *,
        final: bool = False,
        business_key: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Committed | Journaled | Declined:
        """Spends ``cost`` from the hold (default: one unit of the SKU it was reserved in).

        A decline (EXCEEDS_HOLD, RESERVATION_EXPIRED, RESERVATION_CLOSED) is returned, not raised.
        :class:`Journaled` (Redis was away; the sidecar's outage journal took the commit) is a
        success: go on with the work (see the module docstring for what the hold records).
        """
        op = _ops.commit(self.reservation_id, self._unit_cost(cost), final, business_key, labels, request_id)
        result = self._client._run(op, timeout)
        self._commit_answered(result, final)
        return result

    def commit_batch(self, items: Iterable[BatchItem], *, timeout: float | None = None) -> BatchCommitted:
        """Spends up to 100 items from the hold in one call and one atomic step (a worker's
        rows): see :meth:`CreditClient.commit_batch`. Each item's decline is in the result, not
        raised; the hold stays open (leaving the block releases the rest).
        """
        result = self._client._run(_ops.commit_batch(self.reservation_id, items), timeout)
        self._batch_answered(result)
        return result

    def extend(
        self,
        cost: Cost | None = None,
        *,
        ttl_ms: int = 0,
        min_quantity: int = 0,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Extended | Declined:
        """Holds ``cost`` more and/or moves the deadline (see :meth:`CreditClient.extend`; with
        ``min_quantity``, as many whole units of ``cost`` as fit, at least that many)."""
        op = _ops.extend(self.reservation_id, cost, ttl_ms, request_id, min_quantity)
        result = self._client._run(op, timeout)
        self._extend_answered(result, background=False)
        return result

    def release(self, *, request_id: str | None = None, timeout: float | None = None) -> Released | Declined:
        """Closes the hold now and returns what it still holds (leaving the block does this)."""
        result = self._client._run(_ops.release(self.reservation_id, request_id), timeout)
        self.release_result = result
        self._release_answered(result)
        return result

    def _keep_extending(self) -> None:
        keep_alive = self.keep_alive
        assert keep_alive is not None
        while not self._stop.wait(keep_alive.every):
            op = _ops.extend(self.reservation_id, keep_alive.cost, keep_alive.ttl_ms, None, keep_alive.min_quantity)
            try:
                result = self._client._run(op, stop=self._stop)
            except CreditError as error:
                self._background_failed(error)
                continue
            self._extend_answered(result, background=True)
            if self._extension_declined(result):
                return
