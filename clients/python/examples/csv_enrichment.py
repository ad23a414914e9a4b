"""CSV bulk enrichment: hold credits for the whole file up front (refused whole if the team
cannot cover it), let workers enrich it in chunks and commit each chunk's rows that found new,
verified data in one call, and release what was not used when the file is done — or fails.

    python examples/csv_enrichment.py --address 127.0.0.1:50051 [--file contacts.csv] [--batch-size 100]
"""

from __future__ import annotations

import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _demo import ANCHOR_MS, arguments, token
from credit_sidecar import COMMIT_BATCH_MAX, BatchItem, CreditClient, Hold, HoldDeclined, ItemCommitted, Released, Sku

ROW = "enrichment.row"  # the price book's SKU for one enriched row (1 credit by default)


def enrich(row: dict[str, str]) -> dict[str, str] | None:
    """Stands in for the data provider: rows with a company get an email, the others nothing."""
    company = row["company"]
    if not company:
        return None
    return {"email": f"{row['name'].split()[0].lower()}@{company}"}


def work(hold: Hold, chunk: list[dict[str, str]]) -> int:
    """Enriches a chunk of rows and commits the ones that found data in one call (one atomic
    step); returns how many rows were charged."""
    items = [
        # The item id makes a retried batch charge nothing twice; the business key charges each
        # contact once per cycle, whichever worker, batch or re-run commits it.
        BatchItem(
            Sku(ROW), item_id=f"row:{row['id']}", business_key=f"contact:{row['id']}:email", labels={"row": row["id"]}
        )
        for row in chunk
        if enrich(row) is not None  # nothing new: nothing charged
    ]
    if not items:
        return 0
    result = hold.commit_batch(items)
    return sum(1 for item in result.items if isinstance(item, ItemCommitted) and item.charged > 0)


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], "csv-demo")
    parser.add_argument("--file", type=Path, default=Path(__file__).with_name("contacts.csv"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=COMMIT_BATCH_MAX, help="rows a worker commits per call")
    args = parser.parse_args()
    if not 1 <= args.batch_size <= COMMIT_BATCH_MAX:
        parser.error(f"--batch-size must be in 1..={COMMIT_BATCH_MAX}")
    with args.file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chunks = [rows[start : start + args.batch_size] for start in range(0, len(rows), args.batch_size)]

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
                    charged = sum(pool.map(lambda chunk: work(hold, chunk), chunks))
        except HoldDeclined as declined:
            print(f"the batch was refused whole: {declined.declined.message}")
            return 1
        returned = hold.release_result.returned if isinstance(hold.release_result, Released) else 0
        print(f"enriched {charged} of {len(rows)} rows: charged {hold.committed}, released {returned}")
        print(f"batches: {len(chunks)} of at most {args.batch_size} rows, each committed in one call")
        print(f"available now: {client.get_balance(args.account).totals.available}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
