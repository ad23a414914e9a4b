"""Small helpers the tests share."""

from __future__ import annotations

from credit_sidecar import AsyncCreditClient, CreditClient

ANCHOR_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: a fixed plan anchor, so setting a plan again never restarts a cycle."""


def fund(client: CreditClient, account: str = "acme", credits: int = 1000) -> None:
    """Puts ``account`` on a monthly plan of ``credits``."""
    client.admin.set_plan(account, credits, anchor_unix_ms=ANCHOR_MS)


async def afund(client: AsyncCreditClient, account: str = "acme", credits: int = 1000) -> None:
    await client.admin.set_plan(account, credits, anchor_unix_ms=ANCHOR_MS)
