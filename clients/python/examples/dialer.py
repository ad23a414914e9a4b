"""Dialer: hold a few minutes at the region's rate when a call starts, commit each minute as it
passes, keep the hold alive in the background while the call lasts (a minute more each minute),
and commit the last minute as final on hang-up. If this process dies, the extensions stop and
the hold expires by itself.

    python examples/dialer.py --address 127.0.0.1:50051 --region de --minutes 4

A "minute" lasts --minute-seconds (1 s by default, so the demo ends quickly; 60 in real life).
"""

from __future__ import annotations

import sys
import threading

from _demo import ANCHOR_MS, arguments, token
from credit_sidecar import CreditClient, Declined, HoldDeclined, Journaled, KeepAlive, Sku

AHEAD = 3  # minutes held ahead of the call


def main() -> int:
    parser = arguments(__doc__.splitlines()[0], "dialer-demo")
    parser.add_argument("--region", choices=["us", "de"], default="us", help="priced as dialer.minute.<region>")
    parser.add_argument("--minutes", type=int, default=4, help="how long the call lasts")
    parser.add_argument("--minute-seconds", type=float, default=1.0)
    args = parser.parse_args()
    minute = Sku(f"dialer.minute.{args.region}")
    ttl_ms = max(1000, int(AHEAD * args.minute_seconds * 1000))  # the sidecar's shortest TTL is 1 s
    out_of_credit = threading.Event()

    def on_decline(declined: Declined) -> None:
        print(f"extension declined: {declined.message}; hanging up")
        out_of_credit.set()

    keep_alive = KeepAlive(every=args.minute_seconds, ttl_ms=ttl_ms, cost=minute, on_decline=on_decline)
    with CreditClient(args.address, token=token()) as client:
        if args.plan_credits:
            client.admin.set_plan(args.account, args.plan_credits, anchor_unix_ms=ANCHOR_MS)
        try:
            with client.hold(
                args.account, args.user, "dialer", Sku(minute.sku, AHEAD), ttl_ms=ttl_ms, keep_alive=keep_alive
            ) as hold:
                print(f"call started: {hold.reserved.amount} credits held as {hold.reservation_id}")
                for n in range(1, args.minutes + 1):
                    hung_up = out_of_credit.wait(args.minute_seconds) or n == args.minutes
                    result = hold.commit(minute, final=hung_up, labels={"minute": str(n)})
                    if isinstance(result, Declined):
                        print(f"minute {n} not charged: {result.message}")
                        return 1
                    if isinstance(result, Journaled):
                        # Redis was away and the sidecar's outage journal took the minute: it is
                        # charged when Redis answers again. The call goes on.
                        print(f"minute {n}: journaled as {result.request_id}, charged when Redis is back")
                    else:
                        print(f"minute {n}: charged {result.charged}, still held {result.held}")
                    if hung_up:
                        break
        except HoldDeclined as declined:
            print(f"call refused: {declined.declined.message}")
            return 1
        print(f"call ended: {hold.committed} credits for {args.region} minutes, {hold.extensions} extensions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
