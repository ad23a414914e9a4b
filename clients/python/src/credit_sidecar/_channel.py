"""Where and how to connect: the address, TLS, the bearer token and the channel options shared by
the sync and async clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""The sidecar's default ``listen``: it runs next to the caller (same pod or host)."""

Token = str | Callable[[], str]
"""A bearer token, or a function returning the current one (read per call: rotated Secrets)."""

# A sidecar that restarts is back within moments; gRPC's default reconnect backoff (1 s, growing
# to 120 s) would keep callers waiting long after it is up again.
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@dataclass(frozen=True)
class Target:
    """A resolved address: host:port, and channel credentials when TLS is on."""

    address: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]


def target(
    address: str,
    *,
    tls: bool,
    ca_file: str | Path | None,
    cert_file: str | Path | None,
    key_file: str | Path | None,
    options: Sequence[tuple[str, Any]],
) -> Target:
    """Resolves ``address`` (``host:port``, ``http://host:port`` or ``https://host:port``).

    TLS is on with ``https://``, ``tls=True`` or any certificate file; the server is verified
    against ``ca_file`` or the system's roots, and ``cert_file``/``key_file`` answer a server that
    requires client certificates (mTLS).
    """
    if address.startswith("https://"):
        address, tls = address[len("https://") :], True
    elif address.startswith("http://"):
        address = address[len("http://") :]
    address = address.rstrip("/")
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together")
    credentials = None
    if tls or ca_file or cert_file:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file),
            private_key=_read(key_file),
            certificate_chain=_read(cert_file),
        )
    given = {name for name, _ in options}
    merged = tuple(option for option in _DEFAULT_OPTIONS if option[0] not in given) + tuple(options)
    return Target(address, credentials, merged)


def metadata(token: Token | None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return ()
    value = token() if callable(token) else token
    return (("authorization", f"Bearer {value}"),)


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None
