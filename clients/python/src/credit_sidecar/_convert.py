"""From this package's values to protobuf messages and back."""

from __future__ import annotations

from collections.abc import Iterable

from .pb.credits.v1 import admin_pb2, authorizer_pb2, types_pb2
from .types import (
    AccountUpdate,
    Alert,
    AlertCondition,
    AlertsPage,
    AlertThreshold,
    AvailableBelow,
    Balance,
    BatchCommitted,
    CategoryPercent,
    Charged,
    Committed,
    Cost,
    Declined,
    DeliveryState,
    Depleted,
    Extended,
    ItemCommitted,
    Journaled,
    Outcome,
    Quote,
    Released,
    Reservation,
    ReservationState,
    Reserved,
    Scope,
    Sku,
    Totals,
    TrialStarted,
    UsedPercent,
    UserPercent,
    WebhookDelivery,
)

def cost(value: Cost) -> types_pb2.Cost:
    if isinstance(value, Sku):
        return types_pb2.Cost(sku=types_pb2.SkuQuantity(sku=value.sku, quantity=value.quantity))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a cost is an int (credits) or a Sku, not {type(value).__name__}")
    return types_pb2.Cost(amount=value)


def reservation(message: types_pb2.Reservation) -> Reservation:
    return Reservation(
        reservation_id=message.reservation_id,
        account_id=message.account_id,
        user_id=message.user_id,
        category=message.category,
        state=ReservationState(message.state),
        reserved=message.reserved,
        committed=message.committed,
        held=message.held,
        returned=message.returned,
        commit_count=message.commit_count,
        created_unix_ms=message.created_unix_ms,
        deadline_unix_ms=message.deadline_unix_ms,
        closed_unix_ms=message.closed_unix_ms,
        labels=dict(message.labels),
    )


def totals(message: types_pb2.Totals) -> Totals:
    return Totals(
        granted=message.granted,
        available=message.available,
        held=message.held,
        spent=message.spent,
        expired=message.expired,
        owed=message.owed,
    )


def _declined(
    outcome: int, decline: types_pb2.Decline, request_id: str, held_reservation: Reservation | None = None
) -> Declined:
    return Declined(
        outcome=Outcome(outcome),
        scope=Scope(decline.scope),
        scope_id=decline.scope_id,
        requested=decline.requested,
        available=decline.available,
        user_remaining=decline.user_remaining if decline.HasField("user_remaining") else None,
        held=decline.held,
        reservation_state=ReservationState(decline.reservation_state),
        message=decline.message,
        request_id=request_id,
        reservation=held_reservation,
        category_remaining=decline.category_remaining if decline.HasField("category_remaining") else None,
    )


def _maybe_reservation(response: authorizer_pb2.CommitResponse | authorizer_pb2.ExtendResponse |
                       authorizer_pb2.ReleaseResponse) -> Reservation | None:
    return reservation(response.reservation) if response.HasField("reservation") else None


def reserved(response: authorizer_pb2.ReserveResponse, request_id: str) -> Reserved | Declined:
    if Outcome(response.outcome) is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id)
    return Reserved(
        reservation_id=response.reservation_id,
        amount=response.amount,
        quantity=response.quantity,
        deadline_unix_ms=response.deadline_unix_ms,
        available=response.available,
        request_id=request_id,
    )


def committed(
    response: authorizer_pb2.CommitResponse, request_id: str, reservation_id: str
) -> Committed | Journaled | Declined:
    """``OUTCOME_JOURNALED`` is a success without figures (the sidecar sends none), not a decline."""
    outcome = Outcome(response.outcome)
    if outcome is Outcome.JOURNALED:
        return Journaled(reservation_id=reservation_id, request_id=request_id)
    if outcome is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id, _maybe_reservation(response))
    return Committed(
        charged=response.charged,
        already_charged=response.already_charged,
        held=response.held,
        returned=response.returned,
        reservation=_maybe_reservation(response),
        request_id=request_id,
    )


def batch_committed(response: authorizer_pb2.CommitBatchResponse, reservation_id: str) -> BatchCommitted:
    """Each item as its own Commit's answer would read; a declined or journaled item's
    ``request_id`` is its item id (the id it is remembered, or will be applied, under)."""
    items: list[ItemCommitted | Journaled | Declined] = []
    for item in response.items:
        if Outcome(item.outcome) is Outcome.OK:
            items.append(ItemCommitted(item.item_id, item.charged, item.already_charged, item.held))
        elif Outcome(item.outcome) is Outcome.JOURNALED:
            items.append(Journaled(reservation_id=reservation_id, request_id=item.item_id))
        else:
            items.append(_declined(item.outcome, item.decline, item.item_id))
    return BatchCommitted(
        items=tuple(items),
        charged=response.charged,
        reservation=reservation(response.reservation) if response.HasField("reservation") else None,
    )


def extended(response: authorizer_pb2.ExtendResponse, request_id: str) -> Extended | Declined:
    if Outcome(response.outcome) is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id, _maybe_reservation(response))
    return Extended(
        added=response.added,
        added_quantity=response.added_quantity,
        held=response.held,
        deadline_unix_ms=response.deadline_unix_ms,
        reservation=_maybe_reservation(response),
        request_id=request_id,
    )


def released(response: authorizer_pb2.ReleaseResponse, request_id: str) -> Released | Declined:
    if Outcome(response.outcome) is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id, _maybe_reservation(response))
    return Released(returned=response.returned, reservation=_maybe_reservation(response), request_id=request_id)


def charged(response: authorizer_pb2.ChargeResponse, request_id: str) -> Charged | Declined:
    if Outcome(response.outcome) is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id)
    return Charged(
        reservation_id=response.reservation_id,
        charged=response.charged,
        already_charged=response.already_charged,
        available=response.available,
        request_id=request_id,
    )


def quote(response: authorizer_pb2.QuoteResponse) -> Quote:
    return Quote(
        fits=response.fits,
        outcome=Outcome(response.outcome),
        amount=response.amount,
        available=response.available,
        user_remaining=response.user_remaining if response.HasField("user_remaining") else None,
        units_that_fit=response.units_that_fit,
        category_remaining=response.category_remaining if response.HasField("category_remaining") else None,
    )


def balance(response: authorizer_pb2.GetBalanceResponse) -> Balance:
    return Balance(
        totals=totals(response.totals),
        cycle_start_unix_ms=response.cycle.start_unix_ms,
        cycle_end_unix_ms=response.cycle.end_unix_ms,
        user_limit=response.user_limit if response.HasField("user_limit") else None,
        user_used=response.user_used,
        user_remaining=response.user_remaining if response.HasField("user_remaining") else None,
    )


def trial_started(response: admin_pb2.StartTrialResponse, request_id: str) -> TrialStarted | Declined:
    if Outcome(response.outcome) is not Outcome.OK:
        return _declined(response.outcome, response.decline, request_id)
    return TrialStarted(
        lot_id=response.lot_id,
        expires_unix_ms=response.expires_unix_ms,
        totals=totals(response.totals),
        request_id=request_id,
    )


def account_update(response: admin_pb2.WatchAccountResponse) -> AccountUpdate:
    """The account is GetAccount's answer (``admin.get_account`` returns that message as it is)."""
    return AccountUpdate(
        at_unix_ms=response.at_unix_ms,
        account=response.account,
        alerts=tuple(alert(message) for message in response.alerts),
    )


def alert_threshold_message(value: AlertThreshold) -> admin_pb2.AlertThreshold:
    """The proto of a threshold; a ``when`` of another type (``None`` included: a kind this
    client does not know) is refused here rather than sent as a threshold without a condition."""
    if not isinstance(value, AlertThreshold):
        raise TypeError(f"a threshold is an AlertThreshold, not {type(value).__name__}")
    message = admin_pb2.AlertThreshold(threshold_id=value.threshold_id)
    when: AlertCondition | None = value.when
    if isinstance(when, UsedPercent):
        message.used_percent = when.percent
    elif isinstance(when, AvailableBelow):
        message.available_below = when.amount
    elif isinstance(when, Depleted):
        message.depleted = True
    elif isinstance(when, UserPercent):
        message.user_percent.CopyFrom(admin_pb2.ScopedPercent(id=when.user_id, percent=when.percent))
    elif isinstance(when, CategoryPercent):
        message.category_percent.CopyFrom(admin_pb2.ScopedPercent(id=when.category, percent=when.percent))
    else:
        raise TypeError(
            f"threshold {value.threshold_id!r}: when is UsedPercent, AvailableBelow, Depleted, UserPercent or "
            f"CategoryPercent, not {type(when).__name__}"
        )
    return message


def alert_threshold(message: admin_pb2.AlertThreshold) -> AlertThreshold:
    """A threshold as the sidecar sent it; a kind this client does not know reads ``when=None``."""
    kind = message.WhichOneof("when")
    when: AlertCondition | None = None
    if kind == "used_percent":
        when = UsedPercent(message.used_percent)
    elif kind == "available_below":
        when = AvailableBelow(message.available_below)
    elif kind == "depleted":
        when = Depleted()
    elif kind == "user_percent":
        when = UserPercent(message.user_percent.id, message.user_percent.percent)
    elif kind == "category_percent":
        when = CategoryPercent(message.category_percent.id, message.category_percent.percent)
    return AlertThreshold(threshold_id=message.threshold_id, when=when)


def alert_thresholds(messages: Iterable[admin_pb2.AlertThreshold]) -> list[AlertThreshold]:
    return [alert_threshold(message) for message in messages]


def webhook_delivery(message: admin_pb2.WebhookDelivery) -> WebhookDelivery:
    return WebhookDelivery(
        url=message.url,
        state=DeliveryState(message.state),
        attempts=message.attempts,
        last_error=message.last_error,
        next_attempt_unix_ms=message.next_attempt_unix_ms,
        delivered_unix_ms=message.delivered_unix_ms,
    )


def alert(message: admin_pb2.Alert) -> Alert:
    return Alert(
        event_id=message.event_id,
        account_id=message.account_id,
        threshold=alert_threshold(message.threshold),
        cycle_start_unix_ms=message.cycle_start_unix_ms,
        fired_unix_ms=message.fired_unix_ms,
        observed=message.observed,
        base=message.base,
        deliveries=tuple(webhook_delivery(delivery) for delivery in message.deliveries),
    )


def alerts_page(response: admin_pb2.ListAlertsResponse) -> AlertsPage:
    return AlertsPage(
        thresholds=tuple(alert_threshold(message) for message in response.thresholds),
        alerts=tuple(alert(message) for message in response.alerts),
        next_page_token=response.next_page_token,
    )
