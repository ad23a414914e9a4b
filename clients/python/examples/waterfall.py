"""Waterfall enrichment with asyncio: for each contact, hold the worst case, try the providers in
turn, commit what each provider that found data costs (its name on the commit), and release the
rest. Business keys make a retried commit free: the same contact and provider are charged once.

    python examples/waterfall.py --address 127.0.0.1:50051
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from _demo import ANCHOR_MS, arguments, token
from credit_sidecar import AsyncCreditClient, AsyncHold, Committed, Cost, HoldDeclined, Journaled, Sku


@dataclass(frozen=True)
class Provider:
    name: str
    cost: Cost  # a price-book SKU, or 0 when the customer's own API key pays the provider

    def finds(self, contact: int) -> bool:
        """Stands in for the provider's API: each one knows a different slice of contacts."""
        return {"a": contact % 2 == 0, "own-key": contact % 5 == 0, "b": contact % 3 == 0}[self.name]


PROVIDERS = [
    Provider("a", Sku("waterfall.provider.a")),
    Provider("own-key", 0),
    Provider("b", Sku("waterfall.provider.b")),
]
VALIDATOR = Sku("waterfall.validator")


async def run(hold: AsyncHold, contact: int) -> list[str]:
    """One contact's waterfall: stop at the first provider that finds an email, then validate."""
    charged: list[str] = []
    for provider in PROVIDERS:
        if not provider.finds(contact):
            continue
        key = f"contact:{contact}:email"
        result = await hold.commit(provider.cost, business_key=key, labels={"provider": provider.name})
        if isinstance(result, Committed):
            charged.append(f"{provider.name}={result.charged}")
        elif isinstance(result, Journaled):  # charged once the sidecar's outage journal applies it
            charged.append(f"{provider.name}=journaled")
        validated = await hold.commit(VALIDATOR, business_key=f"{key}:validated", labels={"provider": "validator"})
        if isinstance(validated, Committed):
            charged.append(f"validator={validated.charged}")
        elif isinstance(validated, Journaled):
            charged.append("validator=journaled")
        break
    return charged


async def contact_waterfall(client: AsyncCreditClient, account: str, user: str, contact: int, worst: int) -> None:
    try:
        async with client.hold(account, user, "waterfall", worst, labels={"contact": str(contact)}) as hold:
            charged = await run(hold, contact)
    except HoldDeclined as declined:
        print(f"contact {contact}: refused: {declined.declined.message}")
        return
    print(f"contact {contact}: charged {hold.committed} ({', '.join(charged) or 'no provider found data'})")


async def main() -> int:
    parser = arguments(__doc__.splitlines()[0], "waterfall-demo")
    parser.add_argument("--contacts", type=int, default=6)
    args = parser.parse_args()
    async with AsyncCreditClient(args.address, token=token()) as client:
        if args.plan_credits:
            await client.admin.set_plan(args.account, args.plan_credits, anchor_unix_ms=ANCHOR_MS)
        # The worst case: every priced provider and the validator. Quote prices the SKUs, so the
        # price book stays in the sidecar's configuration.
        skus = [p.cost for p in PROVIDERS if isinstance(p.cost, Sku)] + [VALIDATOR]
        worst = sum([(await client.quote(args.account, sku)).amount for sku in skus])
        print(f"worst case per contact: {worst} credits")
        await asyncio.gather(
            *(contact_waterfall(client, args.account, args.user, n, worst) for n in range(1, args.contacts + 1))
        )
        # A worker that crashed after committing runs contact 2 again: its commits charge nothing.
        async with client.hold(args.account, args.user, "waterfall", worst) as hold:
            again = await run(hold, 2)
        print(f"contact 2 again: charged {hold.committed} ({', '.join(again)})")
        balance = await client.get_balance(args.account)
        print(f"spent {balance.totals.spent}, available {balance.totals.available}, held {balance.totals.held}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
