"""Errors are exceptions carrying the gRPC code, the field, whether a retry can help, and the id."""

from __future__ import annotations

import grpc
import pytest

from credit_sidecar import (
    COMMIT_BATCH_MAX,
    BatchItem,
    CreditClient,
    CreditError,
    InvalidArgument,
    NotFound,
    RequestIdReused,
    Reserved,
    Sku,
)
from helpers import fund


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.reserve("acme", "ann", "enrichment", 0), "cost.amount"),
        (lambda c: c.reserve("", "ann", "enrichment", 1), "account_id"),
        (lambda c: c.reserve("acme", "ann", "gold", 1), "category"),
        (lambda c: c.reserve("acme", "ann", "dialer", Sku("dialer.minute.mars", 1)), "cost.sku.sku"),
        (lambda c: c.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 0)), "cost.sku.quantity"),
        (lambda c: c.commit("acme/07", 1), "reservation_id"),
        (lambda c: c.reserve("acme", "ann", "dialer", Sku("dialer.minute.de", 5), min_quantity=6), "min_quantity"),
        (lambda c: c.reserve("acme", "ann", "enrichment", 5, min_quantity=-1), "min_quantity"),
        (lambda c: c.extend("acme/1", ttl_ms=60_000, min_quantity=1), "min_quantity"),
        (lambda c: c.commit_batch("acme/1", []), "items"),
        (lambda c: c.commit_batch("acme/1", [BatchItem(1)] * (COMMIT_BATCH_MAX + 1)), "items"),
        (lambda c: c.commit_batch("acme/1", [BatchItem(1)] * 3 + [BatchItem(-1)]), "items[3].cost.amount"),
        (lambda c: c.commit_batch("acme/1", [BatchItem(Sku("dialer.minute.mars"))]), "items[0].cost.sku.sku"),
        (lambda c: c.commit_batch("acme/1", [BatchItem(1, item_id="a")] * 2), "items[1].item_id"),
        (lambda c: c.commit_batch("acme/1", [BatchItem(1, business_key="k" * 1000)]), "items[0].business_key"),
        (lambda c: c.admin.set_category_budget("acme", "gold", 100), "category"),
        (lambda c: c.admin.set_category_budget("acme", "ai", -1), "budget"),
    ],
)
def test_bad_input_raises_with_the_field_and_is_not_retried(client: CreditClient, call, field: str) -> None:  # type: ignore[no-untyped-def]
    fund(client)
    with pytest.raises(InvalidArgument) as raised:
        call(client)
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == field
    assert not error.retryable and error.attempts == 1
    assert client.get_balance("acme").totals.held == 0, "bad input changes nothing"


def test_unknown_reservation_and_account_are_not_found(client: CreditClient) -> None:
    fund(client)
    with pytest.raises(NotFound) as raised:
        client.get_reservation("acme/999")
    assert raised.value.field == "reservation_id" and not raised.value.retryable
    with pytest.raises(NotFound) as raised:
        client.admin.grant("nobody", 10)
    assert raised.value.field == "account_id"


def test_a_request_id_reused_with_other_parameters_is_refused(client: CreditClient) -> None:
    fund(client)
    first = client.reserve("acme", "ann", "email", 3, request_id="job-1")
    assert isinstance(first, Reserved)
    assert client.reserve("acme", "ann", "email", 3, request_id="job-1") == first
    with pytest.raises(RequestIdReused) as raised:
        client.reserve("acme", "ann", "email", 4, request_id="job-1")
    assert raised.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert raised.value.request_id == "job-1" and not raised.value.retryable


def test_every_error_is_a_credit_error(client: CreditClient) -> None:
    with pytest.raises(CreditError):
        client.get_balance("nobody")
