"""Alert thresholds (CreditAdmin.SetAlertThresholds, ListAlerts): set and echoed as this
package's values, fired once per threshold and billing cycle by the sidecar's background pass
(every ``--alert-interval-ms``, 100 ms here), listed newest first and paged, pushed to
``watch_account`` streams, posted to webhooks; a bad threshold is ``InvalidArgument`` naming it."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import StartSidecar
from credit_sidecar import (
    AccountUpdate,
    AccountWatch,
    Alert,
    AlertsPage,
    AlertThreshold,
    AsyncCreditClient,
    AvailableBelow,
    CategoryPercent,
    Charged,
    CreditClient,
    DeliveryState,
    Depleted,
    InvalidArgument,
    NotFound,
    Released,
    Reserved,
    UsedPercent,
    UserPercent,
    WebhookDelivery,
)
from helpers import afund, fund
from servers import free_port

BOUND = 10.0
"""Seconds a test waits for an alert that must come (a bound, not a wait: passes run every
100 ms, so it comes well within it)."""

FAST = ("--alert-interval-ms", "100")

T = TypeVar("T")


def _eventually(probe: Callable[[], T | None], what: str) -> T:
    """``probe()``'s first answer that is not ``None``, polled within the bound."""
    deadline = time.monotonic() + BOUND
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {BOUND} s")
        time.sleep(0.05)


def _alert(client: CreditClient, threshold_id: str) -> Alert | None:
    """The newest alert of ``threshold_id`` on acme's first page, if it fired yet."""
    return next((a for a in client.admin.list_alerts("acme").alerts if a.threshold.threshold_id == threshold_id), None)


def _next_with_alerts(watch: AccountWatch) -> AccountUpdate:
    """The next update that carries alerts, within the bound (the watch is closed otherwise,
    which ends the iteration and fails the test instead of hanging it)."""
    timer = threading.Timer(BOUND, watch.close)
    timer.start()
    try:
        for update in watch:
            if update.alerts:
                return update
        raise AssertionError(f"no update with alerts within {BOUND} s")
    finally:
        timer.cancel()


THRESHOLDS = [
    AlertThreshold("low", AvailableBelow(500)),
    AlertThreshold("eighty", UsedPercent(80)),
    AlertThreshold("empty", Depleted()),
    AlertThreshold("ann-half", UserPercent("ann", 50)),
    AlertThreshold("ai-most", CategoryPercent("ai", 90)),
]
LISTED = tuple(sorted(THRESHOLDS, key=lambda threshold: threshold.threshold_id))
"""ListAlerts lists the thresholds by id."""


def test_thresholds_fire_once_per_cycle_and_reach_list_and_watch(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(*FAST)
    with CreditClient(sidecar.address) as client:
        fund(client)  # 1000 credits
        assert client.admin.set_alert_thresholds("acme", THRESHOLDS) == THRESHOLDS, "echoed as stored"
        assert client.admin.list_alerts("acme") == AlertsPage(LISTED, (), "")
        cycle_start = client.admin.get_account("acme").cycle.start_unix_ms

        # A watch that looks only once a minute: what it sends next is the alert, pushed at once.
        with client.admin.watch_account("acme", interval_ms=60_000) as watch:
            assert next(watch).alerts == (), "the first update is the account as it is"
            first = client.reserve("acme", "bob", "email", 600)  # available 400: below 500
            assert isinstance(first, Reserved)
            low = _eventually(lambda: _alert(client, "low"), "alert of low")
            pushed = _next_with_alerts(watch)

        assert low == Alert(
            event_id=f"acme/low/{cycle_start}/available_below:500",
            account_id="acme",
            threshold=AlertThreshold("low", AvailableBelow(500)),
            cycle_start_unix_ms=cycle_start,
            fired_unix_ms=low.fired_unix_ms,
            observed=400,
            base=500,
            deliveries=(),  # no webhooks configured
        )
        assert 0 < low.fired_unix_ms <= pushed.at_unix_ms, "pushed once recorded"
        assert pushed.alerts == (low,), "the watch gets the alert as ListAlerts lists it"
        assert pushed.account.totals.available == 400, "with the account as it stood"

        # Crossed again in the same cycle, "low" does not fire again; "eighty" fires in the same
        # pass that sees "low" crossed again, so once it is listed, "low" had its chance.
        released = client.release(first.reservation_id)
        assert isinstance(released, Released)
        assert isinstance(client.reserve("acme", "bob", "email", 850), Reserved)  # 85 % used
        eighty = _eventually(lambda: _alert(client, "eighty"), "alert of eighty")
        assert (eighty.event_id, eighty.observed, eighty.base) == (f"acme/eighty/{cycle_start}/used_percent:80", 850, 1000)
        assert eighty.threshold == AlertThreshold("eighty", UsedPercent(80))

        everything = client.admin.list_alerts("acme")
        assert [a.threshold.threshold_id for a in everything.alerts] == ["eighty", "low"], "newest first, once each"
        assert everything.alerts[1] == low and everything.next_page_token == ""

        # Paged one at a time: the same alerts, in the same order, each page with the thresholds.
        paged: list[Alert] = []
        token = ""
        for _ in range(5):
            page = client.admin.list_alerts("acme", page_size=1, page_token=token)
            assert page.thresholds == LISTED and len(page.alerts) <= 1
            paged += page.alerts
            token = page.next_page_token
            if not token:
                break
        assert not token, "the pages end"
        assert paged == list(everything.alerts)

        # An empty list clears the thresholds; the alerts they fired stay listed.
        assert client.admin.set_alert_thresholds("acme", []) == []
        cleared = client.admin.list_alerts("acme")
        assert cleared.thresholds == () and cleared.alerts == everything.alerts


@pytest.mark.parametrize(
    ("thresholds", "field"),
    [
        ([AlertThreshold("ok", Depleted()), AlertThreshold("zero", UsedPercent(0))], "thresholds[1].used_percent"),
        ([AlertThreshold("most", UsedPercent(101))], "thresholds[0].used_percent"),
        ([AlertThreshold("none", AvailableBelow(0))], "thresholds[0].available_below"),
        ([AlertThreshold("ann", UserPercent("ann", 101))], "thresholds[0].user_percent.percent"),
        ([AlertThreshold("nope", CategoryPercent("no-such-category", 50))], "thresholds[0].category_percent.id"),
        ([AlertThreshold("has space", Depleted())], "thresholds[0].threshold_id"),
        ([AlertThreshold("", Depleted())], "thresholds[0].threshold_id"),
        ([AlertThreshold("twice", Depleted()), AlertThreshold("twice", UsedPercent(50))], "thresholds[1].threshold_id"),
        ([AlertThreshold(f"t{n}", UsedPercent(50)) for n in range(33)], "thresholds"),
    ],
)
def test_a_bad_threshold_is_invalid_argument_naming_it(
    client: CreditClient, thresholds: list[AlertThreshold], field: str
) -> None:
    fund(client)
    kept = [AlertThreshold("kept", AvailableBelow(10))]
    client.admin.set_alert_thresholds("acme", kept)
    with pytest.raises(InvalidArgument) as refused:
        client.admin.set_alert_thresholds("acme", thresholds)
    assert refused.value.field == field
    assert refused.value.attempts == 1, "not retried"
    assert client.admin.list_alerts("acme").thresholds == tuple(kept), "nothing changed"


def test_thresholds_of_an_unknown_account_and_of_no_kind_are_refused(client: CreditClient) -> None:
    with pytest.raises(NotFound):
        client.admin.set_alert_thresholds("nobody", [AlertThreshold("low", AvailableBelow(10))])
    fund(client)
    with pytest.raises(TypeError, match="not NoneType"):
        # What a newer sidecar's unknown kind reads as cannot be sent back (it would be lost).
        client.admin.set_alert_thresholds("acme", [AlertThreshold("future", None)])
    with pytest.raises(InvalidArgument) as refused:
        client.admin.list_alerts("acme", page_token="not-a-token")
    assert refused.value.field == "page_token"


Post = tuple[dict[str, str], dict[str, object]]
"""A webhook post as received: its headers (lower-cased names) and its JSON body."""


@pytest.fixture
def hook() -> Iterator[tuple[str, list[Post]]]:
    """A local webhook that takes every post (200): its URL (with a token in its path) and the
    posts it received."""
    posts: list[Post] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            posts.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token", posts
    server.shutdown()
    server.server_close()


def test_list_alerts_shows_each_webhook_delivery(
    start_sidecar: StartSidecar, tmp_path: Path, hook: tuple[str, list[Post]]
) -> None:
    url, received = hook
    dead = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens: the attempt fails
    (tmp_path / "webhook.key").write_text("test-key\n")
    config = tmp_path / "alerts.toml"
    config.write_text(
        f"webhook_urls = [{json.dumps(url)}, {json.dumps(dead)}]\n"
        f"webhook_secret_file = {json.dumps(str(tmp_path / 'webhook.key'))}\n"
        "webhook_attempts_max = 1\n"
    )
    sidecar = start_sidecar(*FAST, "--config", str(config))
    with CreditClient(sidecar.address) as client:
        fund(client, credits=100)
        client.admin.set_alert_thresholds("acme", [AlertThreshold("empty", Depleted())])
        assert isinstance(client.charge("acme", "ann", "email", 100), Charged)  # available 0

        def settled() -> Alert | None:
            found = _alert(client, "empty")
            if found is None or any(d.state is DeliveryState.PENDING for d in found.deliveries):
                return None
            return found

        alert = _eventually(settled, "delivered and failed webhook deliveries")
        assert (alert.observed, alert.base) == (0, 0)
        assert len(alert.deliveries) == 2, "one per configured webhook"
        by_url = {d.url: d for d in alert.deliveries}
        delivered = by_url[url.removesuffix("/hooks/secret-token") + "/…"]  # by its origin: paths hold tokens
        assert (delivered.state, delivered.attempts, delivered.last_error) == (DeliveryState.DELIVERED, 1, "")
        assert delivered.delivered_unix_ms >= alert.fired_unix_ms
        failed = next(d for d in alert.deliveries if d is not delivered)
        assert isinstance(failed, WebhookDelivery) and failed.url.endswith("/…")
        assert (failed.state, failed.attempts, failed.delivered_unix_ms) == (DeliveryState.FAILED, 1, 0)
        assert failed.last_error, "why it failed"

        headers, body = received[0]
        assert headers["x-credit-sidecar-event-id"] == alert.event_id
        assert (body["event_id"], body["observed"], body["base"]) == (alert.event_id, 0, 0)


async def test_the_async_admin_sets_and_lists_alerts(start_sidecar: StartSidecar) -> None:
    sidecar = start_sidecar(*FAST)
    async with AsyncCreditClient(sidecar.address) as client:
        await afund(client)
        thresholds = [AlertThreshold("low", AvailableBelow(900))]
        assert await client.admin.set_alert_thresholds("acme", thresholds) == thresholds
        assert isinstance(await client.reserve("acme", "ann", "email", 200), Reserved)
        deadline = time.monotonic() + BOUND
        while not (page := await client.admin.list_alerts("acme", page_size=10)).alerts:
            assert time.monotonic() < deadline, f"no alert within {BOUND} s"
            await asyncio.sleep(0.05)
        assert page.thresholds == tuple(thresholds)
        assert [(a.threshold.threshold_id, a.observed, a.base) for a in page.alerts] == [("low", 800, 900)]
        with pytest.raises(InvalidArgument) as refused:
            await client.admin.set_alert_thresholds("acme", [AlertThreshold("x", UsedPercent(0))])
        assert refused.value.field == "thresholds[0].used_percent"
