"""CSV bulk enrichment: hold credits for the whole file up front (refused whole if the team
cannot cover it), commit one row at a time as workers find new, verified data, and release what
was not used when the batch ends — or fails.

    python examples/csv_enrichment.py --address 127.0.0.1:50051 [--file contacts.csv]
"""

from __future__ import annotations

import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _demo import ANCHOR_MS, arguments, token
from credit_sidecar import Committed, CreditClient, Hold, HoldDeclined, Released, Sku

ROW = "enrichment.row"  # the price book's SKU for one enriched row (1 credit by default)


def enrich(row: dict[str, str]) -> dict[str, str] | None:
    """Stands in for the data provider: rows with a company get an email, the others nothing."""
    company = row["company"]
    if not company:
        return None
    return {"email": f"{row['name'].split()[0].lower()}@{company}"}


def work(hold: Hold, row: dict[str, str]) -> bool:
    found = enrich(row)
    if found is None:
        return False  # nothing new: nothing charged
    # The business key charges each contact once per cycle, whichever worker or re-run commits it.
    result = hold.commit(Sku(ROW), business_key=f"contact:{row['id']}:email", labels={"row": row["id"]})
    return isinstance(result, Committed) and result.charged > 0


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], "csv-demo")
    parser.add_argument("--file", type=Path, default=Path(__file__).with_name("contacts.csv"))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with args.file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    with CreditClient(args.address, token=token()) as client:
        if args.plan_credits:
            client.admin.set_plan(args.account, args.plan_credits, anchor_unix_ms=ANCHOR_MS)
        quote = client.quote(args.account, Sku(ROW, len(rows)), user_id=args.user, category="enrichment")
        print(f"{len(rows)} rows cost {quote.amount} credits; {quote.units_that_fit} rows fit now")
        try:
            with client.hold(
                args.account, args.user, "enrichment", Sku(ROW, len(rows)), labels={"file": args.file.name}
            ) as hold:
                print(f"held {hold.reserved.amount} credits as {hold.reservation_id}")
                with ThreadPoolExecutor(max_workers=args.workers) as pool:
                    charged = sum(pool.map(lambda row: work(hold, row), rows))
        except HoldDeclined as declined:
            print(f"the batch was refused whole: {declined.declined.message}")
            return 1
        returned = hold.release_result.returned if isinstance(hold.release_result, Released) else 0
        print(f"enriched {charged} of {len(rows)} rows: charged {hold.committed}, released {returned}")
        print(f"available now: {client.get_balance(args.account).totals.available}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
