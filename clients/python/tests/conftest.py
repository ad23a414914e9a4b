"""Fixtures: a real sidecar per test, on each engine (embedded, and Redis on a private
redis-server shared by the session with a key prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from credit_sidecar import CreditClient
from servers import RedisServer, Sidecar, sidecar_binary

StartSidecar = Callable[..., Sidecar]


def pytest_configure(config: pytest.Config) -> None:
    if not sidecar_binary().is_file():
        raise pytest.UsageError(f"no sidecar binary at {sidecar_binary()} (build it, or set CREDIT_SIDECAR_BIN)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to pause or stop. Request it before ``start_sidecar``
    so that the sidecars stop first (and settle) while it still runs."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that keeps what it acknowledged across ``kill()`` and
    ``restart()`` (an append-only file, fsynced always). Request it before ``start_sidecar``."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(durable_dir=directory).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "redis"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_sidecar(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartSidecar]:
    """Starts sidecars on ``engine`` with extra flags; each one is stopped after the test."""
    started: list[Sidecar] = []

    def start(*args: str, redis: RedisServer | None = None) -> Sidecar:
        workdir = tmp_path / f"sidecar-{len(started)}"
        workdir.mkdir()
        engine_args: list[str] = []
        if engine == "redis":
            server = redis or request.getfixturevalue("redis_server")
            engine_args = ["--redis-url", server.url, "--redis-key-prefix", f"t{uuid.uuid4().hex[:12]}:"]
        sidecar = Sidecar(workdir, [*engine_args, *args])
        started.append(sidecar)
        return sidecar.start()

    yield start
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def sidecar(start_sidecar: StartSidecar) -> Sidecar:
    return start_sidecar()


@pytest.fixture
def client(sidecar: Sidecar) -> Iterator[CreditClient]:
    with CreditClient(sidecar.address) as client:
        yield client

