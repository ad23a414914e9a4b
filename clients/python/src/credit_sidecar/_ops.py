"""One :class:`Op` per RPC: the request (with its request id fixed once, so every retry resends
the same one) and how to read the answer. The sync and async clients only differ in how they
send an Op, so both send identical requests and read answers identically."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from google.protobuf.message import Message

from . import _convert
from .pb.credits.v1 import admin_pb2, authorizer_pb2, types_pb2
from .types import (
    AccountUpdate,
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

T = TypeVar("T")

_PERIODS = {
    "monthly": admin_pb2.PERIOD_MONTHLY,
    "quarterly": admin_pb2.PERIOD_QUARTERLY,
    "semiannual": admin_pb2.PERIOD_SEMIANNUAL,
    "annual": admin_pb2.PERIOD_ANNUAL,
}
_GRANT_KINDS = {
    "addon": types_pb2.LOT_KIND_ADDON,
    "promo": types_pb2.LOT_KIND_PROMO,
    "adjustment": types_pb2.LOT_KIND_ADJUSTMENT,
}


@dataclass(frozen=True)
class Op(Generic[T]):
    service: Literal["authorizer", "admin"]
    method: str
    request: Message
    request_id: str | None
    read: Callable[[Any], T]
    item_ids: tuple[str, ...] = ()
    """CommitBatch: its items' ids (each item's request id), fixed like ``request_id``."""


def _id(request_id: str | None) -> str:
    """The caller's id, or a fresh uuid4 for this one logical call (kept across its retries)."""
    return request_id if request_id is not None else str(uuid.uuid4())


def reserve(
    account_id: str,
    user_id: str,
    category: str,
    cost: Cost,
    ttl_ms: int,
    labels: Mapping[str, str] | None,
    request_id: str | None,
    min_quantity: int,
) -> Op[Reserved | Declined]:
    rid = _id(request_id)
    request = authorizer_pb2.ReserveRequest(
        account_id=account_id,
        user_id=user_id,
        category=category,
        cost=_convert.cost(cost),
        ttl_ms=ttl_ms,
        request_id=rid,
        labels=dict(labels or {}),
        min_quantity=min_quantity,
    )
    return Op("authorizer", "Reserve", request, rid, lambda r: _convert.reserved(r, rid))


def commit(
    reservation_id: str,
    cost: Cost,
    final: bool,
    business_key: str,
    labels: Mapping[str, str] | None,
    request_id: str | None,
) -> Op[Committed | Journaled | Declined]:
    rid = _id(request_id)
    request = authorizer_pb2.CommitRequest(
        reservation_id=reservation_id,
        cost=_convert.cost(cost),
        final=final,
        request_id=rid,
        business_key=business_key,
        labels=dict(labels or {}),
    )
    return Op("authorizer", "Commit", request, rid, lambda r: _convert.committed(r, rid, reservation_id))


def commit_batch(reservation_id: str, items: Iterable[BatchItem]) -> Op[BatchCommitted]:
    """Each item's id is fixed here (the caller's, or a uuid4), so every retry of the batch
    resends the same ids and each item is applied once."""
    request = authorizer_pb2.CommitBatchRequest(reservation_id=reservation_id)
    for item in items:
        request.items.add(
            item_id=_id(item.item_id),
            cost=_convert.cost(item.cost),
            business_key=item.business_key,
            labels=dict(item.labels or {}),
        )
    ids = tuple(item.item_id for item in request.items)
    return Op("authorizer", "CommitBatch", request, None, lambda r: _convert.batch_committed(r, reservation_id), ids)


def extend(
    reservation_id: str, cost: Cost | None, ttl_ms: int, request_id: str | None, min_quantity: int
) -> Op[Extended | Declined]:
    rid = _id(request_id)
    request = authorizer_pb2.ExtendRequest(
        reservation_id=reservation_id, ttl_ms=ttl_ms, request_id=rid, min_quantity=min_quantity
    )
    if cost is not None:
        request.cost.CopyFrom(_convert.cost(cost))
    return Op("authorizer", "Extend", request, rid, lambda r: _convert.extended(r, rid))


def release(reservation_id: str, request_id: str | None) -> Op[Released | Declined]:
    rid = _id(request_id)
    request = authorizer_pb2.ReleaseRequest(reservation_id=reservation_id, request_id=rid)
    return Op("authorizer", "Release", request, rid, lambda r: _convert.released(r, rid))


def charge(
    account_id: str,
    user_id: str,
    category: str,
    cost: Cost,
    business_key: str,
    labels: Mapping[str, str] | None,
    request_id: str | None,
) -> Op[Charged | Declined]:
    rid = _id(request_id)
    request = authorizer_pb2.ChargeRequest(
        account_id=account_id,
        user_id=user_id,
        category=category,
        cost=_convert.cost(cost),
        request_id=rid,
        business_key=business_key,
        labels=dict(labels or {}),
    )
    return Op("authorizer", "Charge", request, rid, lambda r: _convert.charged(r, rid))


def quote(account_id: str, cost: Cost, user_id: str, category: str) -> Op[Quote]:
    request = authorizer_pb2.QuoteRequest(
        account_id=account_id, user_id=user_id, category=category, cost=_convert.cost(cost)
    )
    return Op("authorizer", "Quote", request, None, _convert.quote)


def get_balance(account_id: str, user_id: str) -> Op[Balance]:
    request = authorizer_pb2.GetBalanceRequest(account_id=account_id, user_id=user_id)
    return Op("authorizer", "GetBalance", request, None, _convert.balance)


def get_reservation(reservation_id: str) -> Op[Reservation]:
    request = authorizer_pb2.GetReservationRequest(reservation_id=reservation_id)
    return Op("authorizer", "GetReservation", request, None, lambda r: _convert.reservation(r.reservation))


def set_plan(
    account_id: str,
    plan_credits: int,
    period: Period,
    anchor_unix_ms: int,
    addon_credits: int,
    request_id: str | None,
) -> Op[admin_pb2.SetPlanResponse]:
    rid = _id(request_id)
    request = admin_pb2.SetPlanRequest(
        account_id=account_id,
        period=_PERIODS[period],
        anchor_unix_ms=anchor_unix_ms,
        plan_credits=plan_credits,
        addon_credits=addon_credits,
        request_id=rid,
    )
    return Op("admin", "SetPlan", request, rid, _same)


def grant(
    account_id: str,
    amount: int,
    kind: GrantKind,
    expires_unix_ms: int,
    create_account: bool,
    request_id: str | None,
) -> Op[admin_pb2.GrantResponse]:
    rid = _id(request_id)
    request = admin_pb2.GrantRequest(
        account_id=account_id,
        kind=_GRANT_KINDS[kind],
        amount=amount,
        expires_unix_ms=expires_unix_ms,
        request_id=rid,
        create_account=create_account,
    )
    return Op("admin", "Grant", request, rid, _same)


def start_trial(
    account_id: str, credits: int, duration_ms: int, create_account: bool, request_id: str | None
) -> Op[TrialStarted | Declined]:
    rid = _id(request_id)
    request = admin_pb2.StartTrialRequest(
        account_id=account_id,
        credits=credits,
        duration_ms=duration_ms,
        request_id=rid,
        create_account=create_account,
    )
    return Op("admin", "StartTrial", request, rid, lambda r: _convert.trial_started(r, rid))


def set_user_limit(
    account_id: str, user_id: str, limit: int | None, request_id: str | None
) -> Op[admin_pb2.SetUserLimitResponse]:
    rid = _id(request_id)
    request = admin_pb2.SetUserLimitRequest(account_id=account_id, user_id=user_id, request_id=rid)
    if limit is not None:
        request.limit = limit
    return Op("admin", "SetUserLimit", request, rid, _same)


def set_category_budget(
    account_id: str, category: str, budget: int | None, request_id: str | None
) -> Op[admin_pb2.SetCategoryBudgetResponse]:
    rid = _id(request_id)
    request = admin_pb2.SetCategoryBudgetRequest(account_id=account_id, category=category, request_id=rid)
    if budget is not None:
        request.budget = budget
    return Op("admin", "SetCategoryBudget", request, rid, _same)


def get_account(account_id: str) -> Op[admin_pb2.GetAccountResponse]:
    return Op("admin", "GetAccount", admin_pb2.GetAccountRequest(account_id=account_id), None, _same)


def watch_account(account_id: str, interval_ms: int) -> Op[AccountUpdate]:
    """A server stream: ``read`` converts each message. Not sent through ``_run`` (no retries, no
    deadline): see :mod:`credit_sidecar.watch`."""
    request = admin_pb2.WatchAccountRequest(account_id=account_id, interval_ms=interval_ms)
    return Op("admin", "WatchAccount", request, None, _convert.account_update)


def list_reservations(
    account_id: str, state: ReservationState | None, page_size: int, page_token: str, settled: bool
) -> Op[admin_pb2.ListReservationsResponse]:
    request = admin_pb2.ListReservationsRequest(
        account_id=account_id,
        state=types_pb2.ReservationState.Name(state or ReservationState.UNSPECIFIED),
        page_size=page_size,
        page_token=page_token,
        settled=settled,
    )
    return Op("admin", "ListReservations", request, None, _same)


def get_usage(account_id: str, cycle_start_unix_ms: int, reservation_id: str) -> Op[admin_pb2.GetUsageResponse]:
    request = admin_pb2.GetUsageRequest(
        account_id=account_id, cycle_start_unix_ms=cycle_start_unix_ms, reservation_id=reservation_id
    )
    return Op("admin", "GetUsage", request, None, _same)


def get_account_history(account_id: str, page_size: int, page_token: str) -> Op[admin_pb2.GetAccountHistoryResponse]:
    request = admin_pb2.GetAccountHistoryRequest(account_id=account_id, page_size=page_size, page_token=page_token)
    return Op("admin", "GetAccountHistory", request, None, _same)


def set_alert_thresholds(account_id: str, thresholds: Iterable[AlertThreshold]) -> Op[list[AlertThreshold]]:
    """Replaces the account's set, so sending it again changes nothing: no request id, and a
    retry after a lost answer is safe."""
    request = admin_pb2.SetAlertThresholdsRequest(
        account_id=account_id, thresholds=[_convert.alert_threshold_message(t) for t in thresholds]
    )
    return Op("admin", "SetAlertThresholds", request, None, lambda r: _convert.alert_thresholds(r.thresholds))


def list_alerts(account_id: str, page_size: int, page_token: str) -> Op[AlertsPage]:
    request = admin_pb2.ListAlertsRequest(account_id=account_id, page_size=page_size, page_token=page_token)
    return Op("admin", "ListAlerts", request, None, _convert.alerts_page)


def _same(response: T) -> T:
    """Admin answers are handed back as the protobuf messages (typed by the generated .pyi)."""
    return response
