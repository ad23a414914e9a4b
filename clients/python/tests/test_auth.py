"""Bearer tokens (README "Authentication") and TLS, against a sidecar configured for them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import StartSidecar
from credit_sidecar import (
    NO_RETRY,
    AsyncCreditClient,
    CreditClient,
    PermissionDenied,
    Reserved,
    Unauthenticated,
    Unavailable,
)
from helpers import ANCHOR_MS, fund
from servers import Sidecar

WORKER = "worker-token-0123456789"
BILLING = "billing-token-0123456789"
TOKENS = f"""
[[tokens]]
name = "worker"
token = "{WORKER}"
scopes = ["authorize"]
accounts = ["acme"]

[[tokens]]
name = "billing"
token = "{BILLING}"
scopes = ["admin", "authorize"]
"""


@pytest.fixture
def guarded(start_sidecar: StartSidecar, tmp_path: Path) -> Sidecar:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    return start_sidecar("--auth-tokens-file", str(tokens))


def test_calls_carry_the_bearer_token(guarded: Sidecar) -> None:
    with CreditClient(guarded.address, token=BILLING) as billing:
        fund(billing)
        billing.admin.set_plan("other", 10, anchor_unix_ms=ANCHOR_MS)
    with CreditClient(guarded.address, token=WORKER) as worker:
        assert isinstance(worker.reserve("acme", "ann", "email", 1), Reserved)
        with pytest.raises(PermissionDenied) as raised:
            worker.reserve("other", "ann", "email", 1)
        assert raised.value.field == "account_id" or raised.value.field is None
        with pytest.raises(PermissionDenied):
            worker.admin.get_account("acme")


def test_a_watch_carries_the_bearer_token(guarded: Sidecar) -> None:
    with CreditClient(guarded.address, token=BILLING) as billing:
        fund(billing)
        with billing.admin.watch_account("acme") as watch:
            assert next(watch).account.account_id == "acme"
    with CreditClient(guarded.address, token=WORKER) as worker, pytest.raises(PermissionDenied):
        worker.admin.watch_account("acme")
    with CreditClient(guarded.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.admin.watch_account("acme")


def test_missing_or_unknown_tokens_are_unauthenticated(guarded: Sidecar) -> None:
    for token in (None, "not-a-known-token-at-all"):
        with CreditClient(guarded.address, token=token) as client, pytest.raises(Unauthenticated) as raised:
            client.get_balance("acme")
        assert not raised.value.retryable and raised.value.attempts == 1


async def test_a_token_function_is_asked_on_every_call(guarded: Sidecar) -> None:
    current = [BILLING]
    async with AsyncCreditClient(guarded.address, token=lambda: current[0]) as client:
        await client.admin.set_plan("acme", 5, anchor_unix_ms=ANCHOR_MS)
        current[0] = "rotated-away-0123456789"
        with pytest.raises(Unauthenticated):
            await client.get_balance("acme")


EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """Two private CAs and a server certificate for 127.0.0.1 signed by the first, made with the
    openssl CLI."""
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "ca-key", "other-ca", "other-ca-key")}
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN={ca}",
                 "-keyout", paths[f"{ca}-key"], "-out", paths[ca])  # fmt: skip
    paths["server-key"], paths["server"] = tmp_path / "server-key.pem", tmp_path / "server.pem"
    csr, extensions = tmp_path / "server.csr", tmp_path / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("req", *EC_KEY, "-subj", "/CN=127.0.0.1", "-keyout", paths["server-key"], "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"], "-CAcreateserial",
             "-days", "2", "-extfile", extensions, "-out", paths["server"])  # fmt: skip
    return paths


@pytest.mark.parametrize("engine", ["embedded"])
def test_tls_with_a_ca_file(start_sidecar: StartSidecar, certificates: dict[str, Path]) -> None:
    sidecar = start_sidecar(
        "--tls-cert-file", str(certificates["server"]), "--tls-key-file", str(certificates["server-key"])
    )
    with CreditClient(sidecar.address, ca_file=certificates["ca"]) as client:
        fund(client)
        assert isinstance(client.reserve("acme", "ann", "email", 1), Reserved)
    with CreditClient(f"https://{sidecar.address}", ca_file=certificates["ca"]) as client:
        assert client.get_balance("acme").totals.held == 1
    for wrong in (
        CreditClient(sidecar.address, ca_file=certificates["other-ca"], retry=NO_RETRY, timeout=1),
        CreditClient(sidecar.address, retry=NO_RETRY, timeout=1),  # plaintext to a TLS port
    ):
        with wrong, pytest.raises(Unavailable) as raised:
            wrong.get_balance("acme")
        assert raised.value.retryable
