"""What the examples share: the command line and a demo account to spend from."""

from __future__ import annotations

import argparse
import os
import uuid

from credit_sidecar import DEFAULT_ADDRESS

ANCHOR_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: monthly cycles from the 1st


def arguments(description: str, account_prefix: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="the sidecar (host:port or https://host:port)")
    parser.add_argument(
        "--account",
        default=f"{account_prefix}-{uuid.uuid4().hex[:8]}",
        help="the team to spend from (default: a new demo account, so every run starts afresh)",
    )
    parser.add_argument("--user", default="ann", help="the user the work runs for")
    parser.add_argument(
        "--plan-credits",
        type=int,
        default=1000,
        help="put the account on a monthly plan of this many credits first (0: leave it as it is)",
    )
    return parser


def token() -> str | None:
    """The bearer token, when the sidecar requires one (README "Authentication")."""
    return os.environ.get("CREDIT_SIDECAR_TOKEN") or None
