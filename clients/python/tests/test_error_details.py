"""The google.rpc details the sidecar attaches to every error status (issue 13, item 3), read
through the client: ErrorInfo (domain credits.v1, a stable UPPER_SNAKE reason), BadRequest field
violations for INVALID_ARGUMENT, ResourceInfo for NOT_FOUND, RetryInfo for UNAVAILABLE and
RESOURCE_EXHAUSTED."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import grpc
import pytest

from conftest import StartSidecar
from credit_sidecar import (
    NO_RETRY,
    CreditClient,
    CreditError,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    RequestIdReused,
    Resource,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from helpers import fund
from servers import RedisServer

UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
DOMAIN = "credit-sidecar"
"""The ErrorInfo domain issue 13's contract names for every error of the API."""


def assert_error_info(error: CreditError) -> None:
    assert error.domain == DOMAIN, error
    assert error.reason is not None and UPPER_SNAKE.match(error.reason), error.reason


def test_invalid_argument_names_the_field_in_a_field_violation(client: CreditClient) -> None:
    fund(client)
    with pytest.raises(InvalidArgument) as raised:
        client.reserve("acme", "ann", "enrichment", 0)
    error = raised.value
    assert_error_info(error)
    assert [v.field for v in error.field_violations] == ["cost.amount"]
    assert error.field_violations[0].description
    assert error.retry_delay is None and not error.retryable


def test_the_same_mistake_gets_the_same_reason(client: CreditClient) -> None:
    fund(client)
    reasons = set()
    for account in ("", "a/b", "x" * 65):
        with pytest.raises(InvalidArgument) as raised:
            client.reserve(account, "ann", "enrichment", 1)
        assert [v.field for v in raised.value.field_violations] == ["account_id"]
        reasons.add(raised.value.reason)
    assert len(reasons) == 1, reasons


def test_not_found_names_the_resource(client: CreditClient) -> None:
    fund(client)
    with pytest.raises(NotFound) as raised:
        client.get_reservation("acme/999")
    assert_error_info(raised.value)
    assert raised.value.resource == Resource("reservation", "acme/999")
    with pytest.raises(NotFound) as raised:
        client.admin.grant("nobody", 10)
    assert_error_info(raised.value)
    assert raised.value.resource == Resource("account", "nobody")


def test_request_id_reuse_has_a_reason(client: CreditClient) -> None:
    fund(client)
    client.reserve("acme", "ann", "email", 3, request_id="job-1")
    with pytest.raises(RequestIdReused) as raised:
        client.reserve("acme", "ann", "email", 4, request_id="job-1")
    assert_error_info(raised.value)


def test_auth_refusals_have_reasons(start_sidecar: StartSidecar, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[tokens]]\nname = "worker"\ntoken = "worker-token-0123456789"\nscopes = ["authorize"]\n')
    sidecar = start_sidecar("--auth-tokens-file", str(tokens))
    with CreditClient(sidecar.address) as anonymous, pytest.raises(Unauthenticated) as unauthenticated:
        anonymous.get_balance("acme")
    assert_error_info(unauthenticated.value)
    with CreditClient(sidecar.address, token="worker-token-0123456789") as worker:
        with pytest.raises(PermissionDenied) as denied:
            worker.admin.get_account("acme")
    assert_error_info(denied.value)


@pytest.mark.parametrize("engine", ["redis"])
def test_a_hung_store_answers_unavailable_with_a_retry_delay(
    private_redis: RedisServer, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar("--redis-timeout-ms", "100", redis=private_redis)
    with CreditClient(sidecar.address, retry=NO_RETRY) as client:
        fund(client)
        private_redis.pause()
        try:
            with pytest.raises(Unavailable) as raised:
                client.reserve("acme", "ann", "email", 1)
        finally:
            private_redis.resume()
    error = raised.value
    assert_error_info(error)
    assert error.retryable and error.retry_delay is not None and error.retry_delay > 0


@pytest.mark.parametrize("engine", ["redis"])
def test_overload_answers_resource_exhausted_with_a_delay_the_retry_honours(
    private_redis: RedisServer, start_sidecar: StartSidecar
) -> None:
    sidecar = start_sidecar("--concurrency-max", "1", "--redis-timeout-ms", "1000", redis=private_redis)
    with CreditClient(sidecar.address, retry=NO_RETRY) as client:
        fund(client)
        private_redis.pause()
        done = threading.Event()
        blocker = threading.Thread(target=_hold_the_permit, args=(client, done))
        blocker.start()
        try:
            error = _first_shed_error(client)
        finally:
            done.set()
            private_redis.resume()
            blocker.join()
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_error_info(error)
    assert error.retryable and error.retry_delay is not None and error.retry_delay > 0
    wait = RetryPolicy(initial_backoff=0.001, max_backoff=0.001).delay(error, 1, 0.0)
    assert wait is not None and wait >= error.retry_delay, "the server's delay is honoured"


def _hold_the_permit(client: CreditClient, done: threading.Event) -> None:
    """Keeps a call in flight (stuck on the paused Redis) so that the only permit is taken."""
    while not done.is_set():
        try:
            client.get_balance("acme", timeout=10)
        except CreditError:
            done.wait(0.01)


def _first_shed_error(client: CreditClient) -> Overloaded:
    """Calls until one is shed: at any moment one of the two threads holds the permit."""
    for _ in range(1000):
        try:
            client.get_balance("acme", timeout=10)
        except Overloaded as error:
            return error
        except Unavailable:
            continue  # this call had the permit
    raise AssertionError("no call was shed")
