"""How an error status becomes a CreditError, with and without google.rpc details.

The sidecar now always sends details, so the fallback for their absence (an older sidecar, a
proxy that strips trailers) is exercised here on statuses built by hand, as grpc.aio would hand
them to the client."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from credit_sidecar import FieldViolation, InvalidArgument, NotFound, Overloaded, Resource
from credit_sidecar.errors import from_rpc_error


def _error(code: grpc.StatusCode, message: str, *details: object) -> aio.AioRpcError:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)  # type: ignore[arg-type]
        packed.append(wrapper)
    trailers = aio.Metadata()
    if details:
        status = status_pb2.Status(code=code.value[0], message=message, details=packed)
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    return aio.AioRpcError(code, aio.Metadata(), trailers, message)


def test_without_details_the_field_comes_from_the_message() -> None:
    error = from_rpc_error(
        _error(grpc.StatusCode.INVALID_ARGUMENT, "cost.sku.quantity: must be at least 1"), "rid-1", 1
    )
    assert isinstance(error, InvalidArgument)
    assert (error.field, error.reason, error.retry_delay) == ("cost.sku.quantity", None, None)
    assert error.request_id == "rid-1"
    assert not error.retryable
    prose = from_rpc_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "ReserveRequest: not a valid protobuf"), None, 1)
    assert prose.field is None
    item = from_rpc_error(
        _error(grpc.StatusCode.INVALID_ARGUMENT, "items[3].cost.amount: must be in 0..=10"), None, 1, ("a", "b")
    )
    assert (item.field, item.request_id, item.item_ids) == ("items[3].cost.amount", None, ("a", "b"))


def test_without_details_retryability_follows_the_code() -> None:
    error = from_rpc_error(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded"), "rid", 2)
    assert isinstance(error, Overloaded) and error.retryable and error.retry_delay is None and error.attempts == 2


def test_details_are_read() -> None:
    error = from_rpc_error(
        _error(
            grpc.StatusCode.NOT_FOUND,
            "reservation_id: no reservation acme/9",
            error_details_pb2.ErrorInfo(reason="RESERVATION_NOT_FOUND", domain="credits.v1", metadata={"k": "v"}),
            error_details_pb2.ResourceInfo(resource_type="reservation", resource_name="acme/9"),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)),
        ),
        "rid",
        1,
    )
    assert isinstance(error, NotFound)
    assert (error.reason, error.domain, dict(error.metadata)) == ("RESERVATION_NOT_FOUND", "credits.v1", {"k": "v"})
    assert error.resource == Resource("reservation", "acme/9")
    assert error.retry_delay == 1.5 and error.retryable


def test_field_violations_win_over_the_message() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="labels", description="too many")]
    )
    error = from_rpc_error(_error(grpc.StatusCode.INVALID_ARGUMENT, "cost.amount: whatever", bad), None, 1)
    assert error.field == "labels" and error.field_violations == (FieldViolation("labels", "too many"),)


def test_details_that_contradict_the_status_are_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_ELSE", domain="credits.v1")
    wrapper = any_pb2.Any()
    wrapper.Pack(info)
    other = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="other", details=[wrapper])
    trailers = aio.Metadata(("grpc-status-details-bin", other.SerializeToString()))
    error = from_rpc_error(
        aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, aio.Metadata(), trailers, "account_id: empty"), None, 1
    )
    assert error.reason is None and error.field == "account_id"


def test_a_broken_request_stream_is_retryable_but_a_plain_cancel_is_not() -> None:
    info = error_details_pb2.ErrorInfo(reason="REQUEST_BROKEN", domain="credits.v1")
    broken = from_rpc_error(_error(grpc.StatusCode.CANCELLED, "request: stream reset", info), "rid", 1)
    assert broken.retryable
    assert not from_rpc_error(_error(grpc.StatusCode.CANCELLED, "Cancelled"), "rid", 1).retryable
