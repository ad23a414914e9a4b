"""Errors: every gRPC error status becomes a :class:`CreditError` (or one of its subclasses).

Errors are for what is not a business outcome (bad input, unknown ids, a request id reused with
other parameters, auth, an unavailable or overloaded sidecar); declines are values (see
:mod:`credit_sidecar.types`). The sidecar attaches ``google.rpc`` details to its error statuses
(``ErrorInfo``, ``BadRequest``, ``RetryInfo``, ``ResourceInfo``); when they are absent (an older
sidecar, a proxy that dropped the trailer) the classification falls back to the status code and
the message, which the sidecar starts with the offending field (``cost.amount: must be …``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
from grpc_status import rpc_status

from .types import Declined

log = logging.getLogger("credit_sidecar")

RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Codes where the outcome is unknown or the sidecar is busy: retrying with the same request id
is safe (the retry gets the first answer) and can help."""

RETRYABLE_REASONS = frozenset({"REQUEST_BROKEN"})
"""Reasons that make another code retryable: CANCELLED is normally the caller's own doing, but
the sidecar sends it (reason REQUEST_BROKEN) when a request stream broke on the way in."""

_FIELD_PREFIX = re.compile(r"^([a-z_][a-z0-9_]*(?:\[[0-9]+\])?(?:\.[a-z_][a-z0-9_]*(?:\[[0-9]+\])?)*): ")
"""The field a message starts with: ``cost.amount``, or in a batch ``items[3].cost.amount``."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str
    reason: str = ""


@dataclass(frozen=True)
class Resource:
    """The missing thing of a NOT_FOUND (``google.rpc.ResourceInfo``): ``account`` or
    ``reservation``, and its id."""

    resource_type: str
    resource_name: str


class CreditError(Exception):
    """A call failed with a gRPC error status.

    ``reason`` is the server's stable UPPER_SNAKE code (``ErrorInfo.reason``), or ``None`` when the
    status carried no details. ``retryable`` says whether retrying the same request (same
    ``request_id``) can help; ``retry_delay`` (seconds) is the server's hint, when it gave one.
    ``request_id`` is the id the call was sent with: keep it to retry later, since the sidecar
    remembers ids for ``request_id_retention_ms`` (24 h by default). For ``commit_batch``, which
    has no request id, ``item_ids`` are its items' ids in order (send the items again with them).
    ``attempts`` counts the tries made before giving up.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
        resource: Resource | None = None,
        request_id: str | None = None,
        item_ids: Iterable[str] = (),
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_delay = retry_delay
        self.resource = resource
        self.request_id = request_id
        self.item_ids = tuple(item_ids)
        self.attempts = attempts

    @property
    def field(self) -> str | None:
        """The offending request field (``account_id``, ``cost.amount``, …), when one is known:
        from the ``BadRequest`` detail, else from the message, which the sidecar starts with it."""
        if self.field_violations:
            return self.field_violations[0].field
        if self.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            match = _FIELD_PREFIX.match(self.message)
            return match.group(1) if match else None
        return None

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES or self.retry_delay is not None or self.reason in RETRYABLE_REASONS


class InvalidArgument(CreditError):
    """Bad input; nothing changed. Fix the request: retrying it cannot help."""


class NotFound(CreditError):
    """Unknown account or reservation (see ``resource``)."""


class RequestIdReused(CreditError):
    """ALREADY_EXISTS: this request id (or a batch item's id: the message names it) was used
    before with other parameters."""


class Unauthenticated(CreditError):
    """No bearer token, or an unknown one."""


class PermissionDenied(CreditError):
    """The token lacks the service's scope, or may not touch the account."""


class Unavailable(CreditError):
    """The sidecar or its store could not answer; the outcome of a change is unknown. Retry with
    the same request id: the retry returns the original answer."""


class DeadlineExceeded(CreditError):
    """No answer within the deadline; the outcome of a change is unknown (retry as above)."""


class Overloaded(CreditError):
    """RESOURCE_EXHAUSTED: too many calls in flight; retry after a backoff."""


_CLASSES: dict[grpc.StatusCode, type[CreditError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: RequestIdReused,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
}


class HoldDeclined(Exception):
    """Raised on entering a hold whose Reserve was declined, so the work never starts.

    ``declined`` carries the figures (what was requested, what is available, which scope
    refused).
    """

    def __init__(self, declined: Declined) -> None:
        super().__init__(f"{declined.outcome.name}: {declined.message}")
        self.declined = declined


def from_rpc_error(
    error: grpc.RpcError, request_id: str | None, attempts: int, item_ids: Iterable[str] = ()
) -> CreditError:
    """Turns a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) into a
    :class:`CreditError`, reading the ``google.rpc.Status`` details when the server sent them."""
    call: Any = error  # both kinds expose code(), details() and trailing_metadata()
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    try:
        status = rpc_status.from_call(call)
    except ValueError as mismatch:
        # The details disagree with the status itself (something rewrote the status on the way):
        # they describe another error, so they are not trusted.
        log.debug("ignoring google.rpc details: %s", mismatch)
        status = None
    cls = _CLASSES.get(code, CreditError)
    return cls(code, message, request_id=request_id, item_ids=item_ids, attempts=attempts, **_details(status))


def _details(status: status_pb2.Status | None) -> dict[str, Any]:
    """The keyword arguments of :class:`CreditError` that the status's details provide."""
    found: dict[str, Any] = {}
    if status is None:
        return found
    violations: list[FieldViolation] = []
    for detail in status.details:
        kind = detail.TypeName()
        if kind == error_details_pb2.ErrorInfo.DESCRIPTOR.full_name:
            info = error_details_pb2.ErrorInfo.FromString(detail.value)
            found.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif kind == error_details_pb2.BadRequest.DESCRIPTOR.full_name:
            bad = error_details_pb2.BadRequest.FromString(detail.value)
            violations += [FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations]
        elif kind == error_details_pb2.RetryInfo.DESCRIPTOR.full_name:
            retry = error_details_pb2.RetryInfo.FromString(detail.value)
            found["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
        elif kind == error_details_pb2.ResourceInfo.DESCRIPTOR.full_name:
            resource = error_details_pb2.ResourceInfo.FromString(detail.value)
            found["resource"] = Resource(resource.resource_type, resource.resource_name)
    if violations:
        found["field_violations"] = violations
    return found
