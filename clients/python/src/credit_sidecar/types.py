"""The values the client hands back: costs, outcomes, and one result type per call.

Declines are answers, not errors (docs/rules.md "Answers"), so every state-changing call returns
either its success type or :class:`Declined`; callers branch with ``isinstance`` or ``match``.
A Commit has a third answer, :class:`Journaled` (accepted while Redis was away, applied later):
a success whose figures are not known yet.
The fields keep the proto's names and units (credits as ``int``, instants as ``*_unix_ms``) so a
figure reads the same here, in the proto and in the sidecar's logs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from .pb.credits.v1 import admin_pb2


@dataclass(frozen=True)
class Sku:
    """``quantity`` units of a price-book SKU, e.g. ``Sku("dialer.minute.de", 3)``."""

    sku: str
    quantity: int = 1


Cost = int | Sku
"""What a call costs: whole credits, or a SKU times a quantity priced by the sidecar."""

COMMIT_BATCH_MAX = 100
"""The most items one ``commit_batch`` takes (the sidecar's limit; more is ``InvalidArgument``,
field ``items``). Cut longer work into batches of this many."""


@dataclass(frozen=True)
class BatchItem:
    """One line item of ``commit_batch``: what a non-final ``commit`` takes.

    ``item_id`` is the item's idempotency key, with a request id's rules, scoped to the
    reservation and remembered as long as it is: without one a uuid4 is made for the call (and
    kept across its retries); give your own (``f"{job}:{row}"``) to send the batch again later,
    from another process too, without charging any item twice.
    """

    cost: Cost
    """Credits (0 allowed) or a ``Sku``, moved from held to spent."""
    item_id: str | None = None
    business_key: str = ""
    """Charged at most once per account and cycle, as for ``commit``."""
    labels: Mapping[str, str] | None = None
    """Recorded on the line item (e.g. ``{"row": "17"}``)."""


class _OpenEnum(enum.IntEnum):
    """An enum that keeps values a newer sidecar may send, as ``UNKNOWN_<n>`` members.

    A client older than the server must still see "some decline" rather than crash on it.
    """

    @classmethod
    def _missing_(cls, value: object) -> _OpenEnum | None:
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class Outcome(_OpenEnum):
    """What a state-changing call decided (``credits.v1.Outcome``)."""

    UNSPECIFIED = 0
    OK = 1
    INSUFFICIENT_CREDIT = 2
    USER_LIMIT_REACHED = 3
    RESERVATION_EXPIRED = 4
    RESERVATION_CLOSED = 5
    EXCEEDS_HOLD = 6
    TRIAL_ALREADY_USED = 7
    CATEGORY_BUDGET_REACHED = 8
    JOURNALED = 9
    """Commit only, and not a decline: Redis could not be reached, and the commit waits in the
    sidecar's outage journal to be applied under its request id (see :class:`Journaled`)."""


class Scope(_OpenEnum):
    """Which limit refused a request (``credits.v1.Scope``)."""

    UNSPECIFIED = 0
    ACCOUNT = 1
    USER = 2
    RESERVATION = 3
    CATEGORY = 4


class ReservationState(_OpenEnum):
    """Where a reservation is in its life (``credits.v1.ReservationState``)."""

    UNSPECIFIED = 0
    HELD = 1
    COMMITTED = 2
    RELEASED = 3
    EXPIRED = 4


Period = Literal["monthly", "quarterly", "semiannual", "annual"]
GrantKind = Literal["addon", "promo", "adjustment"]


@dataclass(frozen=True)
class Reservation:
    """A reservation as the engine holds it."""

    reservation_id: str
    account_id: str
    user_id: str
    category: str
    state: ReservationState
    reserved: int
    committed: int
    held: int
    returned: int
    commit_count: int
    created_unix_ms: int
    deadline_unix_ms: int
    closed_unix_ms: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Declined:
    """A business decline: the call was understood and refused, and nothing changed.

    ``request_id`` is the id the decline is remembered under: retrying with it returns this same
    decline, never a later success.
    """

    ok: ClassVar[bool] = False
    journaled: ClassVar[bool] = False
    """Always ``False`` (see :class:`Journaled`): with ``ok``, what every Commit answer has."""
    outcome: Outcome
    scope: Scope
    scope_id: str
    requested: int
    available: int
    user_remaining: int | None
    held: int
    reservation_state: ReservationState
    message: str
    request_id: str
    reservation: Reservation | None = None
    """Declined Commit, Extend and Release: the reservation as it stands (a declined batch item:
    ``None``, see :attr:`BatchCommitted.reservation`)."""
    category_remaining: int | None = None
    """``CATEGORY_BUDGET_REACHED``: what the category's budget (``scope_id``) has left this
    cycle; ``None`` for the other declines."""


@dataclass(frozen=True)
class Reserved:
    ok: ClassVar[bool] = True
    reservation_id: str
    amount: int
    """Credits held."""
    quantity: int
    """Units held: of the SKU for a ``Sku`` cost (``amount`` / its price), credits for an ``int``
    cost. Less than asked only for a partial hold (``min_quantity``), and then at least that."""
    deadline_unix_ms: int
    available: int
    request_id: str


@dataclass(frozen=True)
class Committed:
    ok: ClassVar[bool] = True
    journaled: ClassVar[bool] = False
    """Always ``False``: the commit was applied (see :class:`Journaled`)."""
    charged: int
    already_charged: bool
    held: int
    returned: int
    reservation: Reservation | None
    request_id: str


@dataclass(frozen=True)
class Journaled:
    """A Commit the sidecar accepted while Redis could not be reached (``OUTCOME_JOURNALED``).

    Not a decline and not an error: the commit is on the sidecar's disk (its outage journal,
    configured per category with ``journal_categories``, Redis engine only) and is applied under
    ``request_id`` as soon as Redis answers again, so the caller goes on as after a
    :class:`Committed` — the work is done and will be charged. What it charged, what the hold
    still holds and whether it was declined when applied (the hold expired or was closed
    meanwhile, or the commit exceeds what is held) are not known yet: the sidecar sends no figures,
    so this type has none. To learn them, send the same Commit again (same ``request_id`` and
    figures) later: it answers ``Journaled`` until the commit has been applied, then
    :class:`Committed` or :class:`Declined`, as the first answer would have been.
    """

    ok: ClassVar[bool] = True
    journaled: ClassVar[bool] = True
    reservation_id: str
    """The reservation the commit is for."""
    request_id: str
    """The id the commit is journaled and will be applied under: send the same commit with it to
    learn what it did."""


@dataclass(frozen=True)
class ItemCommitted:
    """One item of a batch that was committed (or found already charged by its business key)."""

    ok: ClassVar[bool] = True
    item_id: str
    charged: int
    """What this item spent: 0 when ``already_charged``. An item answered from memory (a
    retried batch) shows what it charged the first time."""
    already_charged: bool
    held: int
    """What the reservation held after this item."""


@dataclass(frozen=True)
class BatchCommitted:
    """The answer to ``commit_batch``: one result per item, in the items' order.

    Each item is answered on its own, as its own ``commit`` would be: :class:`ItemCommitted`,
    :class:`Journaled` (Redis away, see :class:`Journaled`), or
    :class:`Declined` (``EXCEEDS_HOLD``, ``RESERVATION_EXPIRED``, ``RESERVATION_CLOSED``; its
    ``request_id`` is the item id) while the other items still apply. A declined item is
    remembered under its id too: after an Extend, send it again under a new id.
    """

    items: tuple[ItemCommitted | Journaled | Declined, ...]
    """With the sidecar's outage journal on, all items are :class:`Journaled` when Redis could not
    be reached (a batch is journaled whole, or not at all)."""
    charged: int
    """What the items charged together (items answered from memory count what they charged)."""
    reservation: Reservation | None
    """The reservation as the last item left it."""

    @property
    def ok(self) -> bool:
        """Whether every item was committed (none declined)."""
        return all(item.ok for item in self.items)

    @property
    def declined(self) -> tuple[Declined, ...]:
        """The declined items, in order (their ``request_id`` is the item id)."""
        return tuple(item for item in self.items if isinstance(item, Declined))

    @property
    def item_ids(self) -> tuple[str, ...]:
        """Every item's id, in order: the ids to send the same batch again with."""
        return tuple(item.item_id if isinstance(item, ItemCommitted) else item.request_id for item in self.items)


@dataclass(frozen=True)
class Extended:
    ok: ClassVar[bool] = True
    added: int
    """Credits added to the hold (0 when only the deadline moved)."""
    added_quantity: int
    """Units added, counted as in :attr:`Reserved.quantity` (0 without a cost). Less than the
    extra cost's quantity only for a partial extension (``min_quantity``), and then at least that."""
    held: int
    deadline_unix_ms: int
    reservation: Reservation | None
    request_id: str


@dataclass(frozen=True)
class Released:
    ok: ClassVar[bool] = True
    returned: int
    reservation: Reservation | None
    request_id: str


@dataclass(frozen=True)
class Charged:
    ok: ClassVar[bool] = True
    reservation_id: str
    charged: int
    already_charged: bool
    available: int
    request_id: str


@dataclass(frozen=True)
class Quote:
    """Whether a cost fits right now; ``outcome`` is the decline a Reserve would get."""

    fits: bool
    outcome: Outcome
    amount: int
    available: int
    user_remaining: int | None
    units_that_fit: int
    category_remaining: int | None = None
    """The category's remaining budget this cycle, when a category with a budget was given."""


@dataclass(frozen=True)
class Totals:
    """Where an account's credits stand. Conservation holds:
    ``granted + owed == available + held + spent + expired``."""

    granted: int
    """Ever granted."""
    available: int
    """The live lots' remainders: what a new Reserve can take."""
    held: int
    """Held by open reservations."""
    spent: int
    """Ever committed (an overdraft included)."""
    expired: int
    """Ever expired (lots that reached their expiry with credits left)."""
    owed: int = 0
    """Spent during a Redis outage beyond what the lots held (work a ``fail_open_categories``
    category admitted from the sidecar's allowance), not yet repaid: an overdraft, which the
    account's next grants repay first (docs/rules.md "Overdraft"). 0 for almost every account."""


@dataclass(frozen=True)
class Balance:
    totals: Totals
    cycle_start_unix_ms: int
    cycle_end_unix_ms: int
    user_limit: int | None
    user_used: int
    user_remaining: int | None


@dataclass(frozen=True)
class TrialStarted:
    ok: ClassVar[bool] = True
    lot_id: int
    expires_unix_ms: int
    totals: Totals
    request_id: str


@dataclass(frozen=True)
class UsedPercent:
    """Fires when the live lots' credits used (held or spent) reach ``percent`` (1..=100) of
    what they were granted (e.g. 80 % of this cycle's plan plus add-ons)."""

    percent: int


@dataclass(frozen=True)
class AvailableBelow:
    """Fires when available credit falls below ``amount`` (1..=1e12 credits)."""

    amount: int


@dataclass(frozen=True)
class Depleted:
    """Fires when available credit reaches 0 (on an account that was granted any)."""


@dataclass(frozen=True)
class UserPercent:
    """Fires when ``user_id``'s use this cycle reaches ``percent`` (1..=100) of their limit (a
    user with no limit never fires)."""

    user_id: str
    percent: int


@dataclass(frozen=True)
class CategoryPercent:
    """Fires when the team's use of ``category`` this cycle reaches ``percent`` (1..=100) of its
    budget (a category with no budget never fires)."""

    category: str
    percent: int


AlertCondition = UsedPercent | AvailableBelow | Depleted | UserPercent | CategoryPercent
"""When an :class:`AlertThreshold` fires (the proto's ``AlertThreshold.when``)."""


@dataclass(frozen=True)
class AlertThreshold:
    """A condition on an account that raises an :class:`Alert` at most once per billing cycle,
    e.g. ``AlertThreshold("eighty", UsedPercent(80))``.

    ``threshold_id`` names it (and its alerts) within the account: 1..=64 bytes of printable
    ASCII without spaces. ``when`` is ``None`` only in what a newer sidecar sends with a kind of
    threshold this client does not know (such a threshold cannot be sent back).
    """

    threshold_id: str
    when: AlertCondition | None


class DeliveryState(_OpenEnum):
    """Where an alert's delivery to one webhook is (``credits.v1.DeliveryState``)."""

    UNSPECIFIED = 0
    PENDING = 1
    """Not delivered yet: the next attempt is due at ``next_attempt_unix_ms``."""
    DELIVERED = 2
    """A 2xx answer was received."""
    FAILED = 3
    """Given up after ``webhook_attempts_max`` attempts."""


@dataclass(frozen=True)
class WebhookDelivery:
    """An alert's delivery to one configured webhook (``ListAlerts`` only)."""

    url: str
    """The webhook's origin (``https://hooks.example.com/…``): its path may hold a token."""
    state: DeliveryState
    attempts: int
    last_error: str
    """Why the last attempt failed (an HTTP status or a connection error); empty if it did not."""
    next_attempt_unix_ms: int
    """``PENDING``: when the next attempt is due (0 otherwise)."""
    delivered_unix_ms: int
    """``DELIVERED``: when (0 otherwise)."""


@dataclass(frozen=True)
class Alert:
    """A threshold crossed, as the sidecar recorded it when it fired (once per threshold and
    billing cycle)."""

    event_id: str
    """``<account_id>/<threshold_id>/<cycle_start_unix_ms>/<kind>:<value>[:<scope>]``: stable
    across replicas and retries (webhook receivers deduplicate on it)."""
    account_id: str
    threshold: AlertThreshold
    cycle_start_unix_ms: int
    """The billing cycle it fired in."""
    fired_unix_ms: int
    observed: int
    """The figure compared: credits used, available, the user's or the category's use."""
    base: int
    """What ``observed`` was compared with: the live lots' credits, the amount, the limit, the
    budget (0 for :class:`Depleted`)."""
    deliveries: tuple[WebhookDelivery, ...] = ()
    """Its delivery to each webhook configured when it fired; filled by ``admin.list_alerts``
    only (empty in an :class:`AccountUpdate`)."""


@dataclass(frozen=True)
class AlertsPage:
    """The answer to ``admin.list_alerts``: the account's thresholds now, and one page of the
    alerts they fired, newest first."""

    thresholds: tuple[AlertThreshold, ...]
    """The account's thresholds, by ``threshold_id`` (on every page)."""
    alerts: tuple[Alert, ...]
    """Newest first; at most ``page_size``."""
    next_page_token: str
    """Pass as ``page_token`` for the next (older) page; empty on the last page."""


@dataclass(frozen=True)
class AccountUpdate:
    """One message of ``admin.watch_account``: the account as ``admin.get_account`` answers it,
    and when the sidecar read it (its clock). The first update is the account as it is; each
    later one is sent because something in it changed (balances, holds, lots, limits, budgets),
    or because alerts of the account fired (``alerts``)."""

    at_unix_ms: int
    account: admin_pb2.GetAccountResponse
    alerts: tuple[Alert, ...] = ()
    """The account's alerts that fired since the previous update (recorded by this sidecar),
    with the account as it stood then; usually empty."""
