//! Threshold alerts through gRPC, on both engines: each kind fires when crossed, once per cycle
//! (also across replicas), again in the next cycle; it is recorded, listed (paged), and pushed
//! to a WatchAccount stream; bad thresholds are refused by field.
//!
//! The server's own alert loop is slowed to an hour: the test runs each pass itself, so "fired
//! once" is a count, not a wait.

use std::sync::Arc;
use std::time::Duration;

use credit_sidecar::alerts::Alerts;
use credit_sidecar::api::pb;
use credit_sidecar::engine::{Engine, MemoryOutbox};
use credit_sidecar::ledger::{Ledger, ManualClock, Rules};
use credit_sidecar::server::ServeOptions;
use credit_sidecar::settle::store::Store;
use tonic::Code;

use crate::harness::*;
use crate::servers::RedisServer;
use crate::settle::settle_setup;

struct Alerting {
    h: Harness,
    store: Store,
    alerts: Arc<Alerts>,
    _dir: tempfile::TempDir,
}

/// A server of `kind` settling into a fresh SQLite ledger.
async fn alerting(kind: EngineKind) -> Alerting {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ledger.db").display());
    alerting_on(kind, &url, None, dir).await
}

/// A server of `kind` settling into the ledger at `url`, posting alerts to `webhooks`.
async fn alerting_on(
    kind: EngineKind,
    url: &str,
    webhooks: Option<credit_sidecar::alerts::Webhooks>,
    dir: tempfile::TempDir,
) -> Alerting {
    let store = Store::connect(url).await.unwrap();
    let clock = ManualClock::new(t0());
    let (engine, redis) = match kind {
        EngineKind::Embedded => {
            let outbox = Some(Arc::new(MemoryOutbox::new(10_000)));
            let ledger = Ledger::new(Rules::default().request_id_retention_ms);
            (Engine::embedded_with(Rules::default(), Arc::new(clock.clone()), ledger, outbox), None)
        }
        EngineKind::Redis => {
            let server = RedisServer::start();
            let engine = redis_engine(&Rules::default(), &redis_settings(vec![server.url()], false), &clock).await;
            (engine, Some(server))
        }
    };
    let alerts = Arc::new(Alerts::new(webhooks));
    let options = ServeOptions {
        settle: Some(settle_setup(&store, "a")),
        alert_interval: Duration::from_secs(3600),
        alerts: alerts.clone(),
        ..ServeOptions::new(Duration::from_secs(3600))
    };
    let h = Harness::serve_settled(clock, engine, redis, options).await;
    Alerting { h, store, alerts, _dir: dir }
}

fn threshold(id: &str, when: pb::alert_threshold::When) -> pb::AlertThreshold {
    pb::AlertThreshold { threshold_id: id.into(), when: Some(when) }
}

fn scoped(id: &str, percent: u32) -> pb::ScopedPercent {
    pb::ScopedPercent { id: id.into(), percent }
}

fn thresholds() -> Vec<pb::AlertThreshold> {
    use pb::alert_threshold::When;
    vec![
        threshold("eighty", When::UsedPercent(80)),
        threshold("low", When::AvailableBelow(100)),
        threshold("empty", When::Depleted(true)),
        threshold("ann-half", When::UserPercent(scoped("ann", 50))),
        threshold("ai-half", When::CategoryPercent(scoped("ai", 50))),
    ]
}

impl Alerting {
    /// One alert pass; the ids of the alerts it fired.
    async fn pass(&self) -> Vec<String> {
        let mut told = self.alerts.subscribe();
        let pass = self.alerts.pass(&self.h.engine, &self.store).await.unwrap();
        let mut fired = Vec::new();
        while let Ok(alert) = told.try_recv() {
            fired.push(alert.threshold.id.clone());
        }
        assert_eq!(fired.len(), pass.fired);
        fired.sort();
        fired
    }

    async fn reserve(&self, user: &str, category: &str, amount: i64) -> String {
        let held = self.h.reserve_cost("acct", user, category, amount_cost(amount), DAY).await;
        assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
        held.reservation_id
    }

    async fn list(&self, page_size: u32, page_token: &str) -> pb::ListAlertsResponse {
        let request = pb::ListAlertsRequest { account_id: "acct".into(), page_size, page_token: page_token.into() };
        self.h.admin.clone().list_alerts(request).await.unwrap().into_inner()
    }
}

crate::engine_tests!(each_threshold_fires_once_per_cycle_is_listed_and_watched);

async fn each_threshold_fires_once_per_cycle_is_listed_and_watched(h: Harness) {
    // The suite's plain harness has no ledger database: alerts need one.
    let refused = h
        .admin
        .clone()
        .set_alert_thresholds(pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds: thresholds() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let kind = if h.redis.is_some() { EngineKind::Redis } else { EngineKind::Embedded };
    h.stop().await;
    let a = alerting(kind).await;
    a.h.account("acct", 1_000).await;
    a.h.set_user_limit("acct", "ann", Some(400)).await;
    a.h.set_category_budget("acct", "ai", Some(100)).await;
    let request = pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds: thresholds() };
    let set = a.h.admin.clone().set_alert_thresholds(request).await.unwrap().into_inner();
    assert_eq!(set.thresholds, thresholds());
    let mut watch =
        a.h.admin
            .clone()
            .watch_account(pb::WatchAccountRequest { account_id: "acct".into(), interval_ms: 100 })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(a.pass().await, Vec::<String>::new(), "nothing crossed yet");

    a.reserve("ann", "ai", 60).await; // ai: 60 of 100; ann: 60 of 400
    assert_eq!(a.pass().await, ["ai-half"]);
    assert_eq!(a.pass().await, Vec::<String>::new(), "once per cycle");
    // The watch gets the alert with the account as it stood.
    let (pushed, cycle_start) = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        if let Some(alert) = message.alerts.first() {
            let account = message.account.unwrap();
            assert_eq!(account.totals.unwrap().held, 60);
            break (alert.clone(), account.cycle.unwrap().start_unix_ms);
        }
    };
    assert_eq!(cycle_start, ms(2026, 2, 28, 0));
    assert_eq!(pushed.event_id, format!("acct/ai-half/{cycle_start}/category_percent:50:ai"));
    assert_eq!((pushed.observed, pushed.base), (60, 100));

    a.reserve("bob", "enrichment", 800).await; // 860 of 1000 used; 140 available
    a.h.set_user_limit("acct", "ann", Some(100)).await; // ann: 60 of 100
    assert_eq!(a.pass().await, ["ann-half", "eighty"]);
    a.reserve("bob", "enrichment", 100).await; // 40 available
    assert_eq!(a.pass().await, ["low"]);
    a.reserve("bob", "enrichment", 40).await;
    assert_eq!(a.pass().await, ["empty"]);
    // Another replica's pass over the same ledger records nothing twice.
    let other = Alerts::default();
    assert_eq!(other.pass(&a.h.engine, &a.store).await.unwrap().fired, 0);

    // Listed newest first, in pages, each once.
    let mut listed: Vec<pb::Alert> = Vec::new();
    let mut token = String::new();
    loop {
        let page = a.list(2, &token).await;
        let mut by_id = thresholds();
        by_id.sort_by(|a, b| a.threshold_id.cmp(&b.threshold_id));
        assert_eq!(page.thresholds, by_id, "listed by id");
        listed.extend(page.alerts);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut ids: Vec<&str> =
        listed.iter().map(|alert| alert.threshold.as_ref().unwrap().threshold_id.as_str()).collect();
    assert!(listed.windows(2).all(|pair| pair[0].fired_unix_ms >= pair[1].fired_unix_ms), "newest first");
    assert_eq!(listed.last().unwrap().event_id, pushed.event_id, "the first to fire is listed last");
    ids.sort_unstable();
    assert_eq!(ids, ["ai-half", "ann-half", "eighty", "empty", "low"]);
    let empty = listed.iter().find(|alert| alert.event_id.contains("/empty/")).unwrap();
    assert_eq!((empty.account_id.as_str(), empty.observed, empty.base), ("acct", 0, 0));

    // A threshold redefined under its id is another threshold: it may fire in this cycle too.
    use pb::alert_threshold::When;
    let redefined = vec![threshold("low", When::AvailableBelow(50))];
    let request = pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds: redefined };
    a.h.admin.clone().set_alert_thresholds(request).await.unwrap();
    assert_eq!(a.pass().await, ["low"]);
    assert_eq!(a.pass().await, Vec::<String>::new());
    let request = pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds: thresholds() };
    a.h.admin.clone().set_alert_thresholds(request).await.unwrap();

    // The next cycle: the plan renews; a threshold crossed again fires again, under the new
    // cycle's id.
    a.h.clock.set(ms(2026, 3, 31, 0));
    a.h.advance(0).await;
    assert_eq!(a.pass().await, Vec::<String>::new(), "renewed: nothing crossed");
    a.reserve("ann", "ai", 70).await;
    assert_eq!(a.pass().await, ["ai-half", "ann-half"]);
    let newest = &a.list(1, "").await.alerts[0];
    assert_eq!(newest.cycle_start_unix_ms, ms(2026, 3, 31, 0));
    a.h.stop().await;
}

/// Bad thresholds are refused by field, and change nothing.
#[tokio::test]
async fn bad_thresholds_are_refused_by_field() {
    use pb::alert_threshold::When;
    let a = alerting(EngineKind::Embedded).await;
    a.h.account("acct", 1_000).await;
    let mut admin = a.h.admin.clone();
    let cases: Vec<(&str, Vec<pb::AlertThreshold>, &str)> = vec![
        ("acct", vec![threshold("x", When::UsedPercent(0))], "thresholds[0].used_percent"),
        ("acct", vec![threshold("x", When::UsedPercent(101))], "thresholds[0].used_percent"),
        (
            "acct",
            vec![threshold("ok", When::Depleted(true)), threshold("", When::Depleted(true))],
            "thresholds[1].threshold_id",
        ),
        (
            "acct",
            vec![threshold("x", When::Depleted(true)), threshold("x", When::AvailableBelow(5))],
            "thresholds[1].threshold_id",
        ),
        ("acct", vec![threshold("x", When::Depleted(false))], "thresholds[0].depleted"),
        ("acct", vec![threshold("x", When::AvailableBelow(0))], "thresholds[0].available_below"),
        ("acct", vec![threshold("x", When::CategoryPercent(scoped("nope", 5)))], "thresholds[0].category_percent.id"),
        ("acct", vec![threshold("x", When::UserPercent(scoped("", 5)))], "thresholds[0].user_percent.id"),
        ("acct", vec![pb::AlertThreshold { threshold_id: "x".into(), when: None }], "thresholds[0]"),
        ("acct", (0..33).map(|i| threshold(&format!("t{i}"), When::Depleted(true))).collect(), "thresholds"),
    ];
    for (account, thresholds, field) in cases {
        let request = pb::SetAlertThresholdsRequest { account_id: account.into(), thresholds };
        let status = admin.set_alert_thresholds(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("{field}: ")), "{field}: {}", status.message());
    }
    let unknown = pb::SetAlertThresholdsRequest { account_id: "nobody".into(), thresholds: thresholds() };
    assert_eq!(admin.set_alert_thresholds(unknown).await.unwrap_err().code(), Code::NotFound);
    let bad_token = pb::ListAlertsRequest { account_id: "acct".into(), page_size: 0, page_token: "junk".into() };
    let status = admin.list_alerts(bad_token).await.unwrap_err();
    assert!(status.message().starts_with("page_token: "), "{}", status.message());
    assert!(a.list(0, "").await.thresholds.is_empty(), "nothing was set");
    a.h.stop().await;
}

/// The server's own loop (every 50 ms here) finds and records a crossed threshold by itself.
#[tokio::test]
async fn the_background_loop_records_what_it_finds() {
    use pb::alert_threshold::When;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display())).await.unwrap();
    let clock = ManualClock::new(t0());
    let ledger = Ledger::new(Rules::default().request_id_retention_ms);
    let outbox = Some(Arc::new(MemoryOutbox::new(10_000)));
    let engine = Engine::embedded_with(Rules::default(), Arc::new(clock.clone()), ledger, outbox);
    let options = ServeOptions {
        settle: Some(settle_setup(&store, "a")),
        alert_interval: Duration::from_millis(50),
        ..ServeOptions::new(Duration::from_secs(3600))
    };
    let h = Harness::serve_settled(clock, engine, None, options).await;
    h.account("acct", 1_000).await;
    let request = pb::SetAlertThresholdsRequest {
        account_id: "acct".into(),
        thresholds: vec![threshold("low", When::AvailableBelow(500))],
    };
    h.admin.clone().set_alert_thresholds(request).await.unwrap();
    h.hold("acct", "ann", 600).await;
    let list = pb::ListAlertsRequest { account_id: "acct".into(), page_size: 0, page_token: String::new() };
    eventually("the loop records the alert", Duration::from_secs(10), async || {
        !h.admin.clone().list_alerts(list.clone()).await.unwrap().into_inner().alerts.is_empty()
    })
    .await;
    let alerts = h.admin.clone().list_alerts(list).await.unwrap().into_inner().alerts;
    assert_eq!((alerts.len(), alerts[0].observed, alerts[0].base), (1, 400, 500));
    h.stop().await;
}

/// What a webhook receiver got: (event id header, timestamp header, signature header, body).
type Received = Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>;

/// A webhook receiver on a free port that answers `failing` to its first `failures` posts, then
/// 200.
async fn receiver(failures: usize, failing: axum::http::StatusCode) -> (String, Received) {
    use axum::http::{HeaderMap, StatusCode};
    let received: Received = Arc::default();
    let log = received.clone();
    let app = axum::Router::new().route(
        "/hook/secret-token",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let mut log = log.lock().unwrap();
                log.push((
                    header("x-credit-sidecar-event-id"),
                    header("x-credit-sidecar-timestamp"),
                    header("x-credit-sidecar-signature"),
                    body,
                ));
                let answer = if log.len() <= failures { failing } else { StatusCode::OK };
                (answer, [("location", "http://127.0.0.1:9/elsewhere")])
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook/secret-token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// An alert is posted to each webhook, signed; a webhook that fails is retried with backoff
/// (the same event id each time: at least once) until it takes it, or given up after
/// `attempts_max`; ListAlerts shows each delivery's state, without the URL's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_posted_signed_retried_and_their_deliveries_listed() {
    use axum::http::StatusCode;
    use credit_sidecar::alerts::{Webhooks, signature};
    use pb::alert_threshold::When;
    let (flaky, flaky_got) = receiver(2, StatusCode::INTERNAL_SERVER_ERROR).await;
    let (broken, broken_got) = receiver(usize::MAX, StatusCode::INTERNAL_SERVER_ERROR).await;
    // A redirect is not followed: a signed alert goes only where it was configured.
    let (moved, moved_got) = receiver(usize::MAX, StatusCode::TEMPORARY_REDIRECT).await;
    let secret = b"whsec-test".to_vec();
    let webhooks = Webhooks {
        urls: vec![flaky.clone(), broken.clone(), moved.clone()],
        secret: secret.clone(),
        attempts_max: 3,
        backoff: Duration::from_millis(20),
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
    let Alerting { h, store, alerts, _dir } = alerting_on(EngineKind::Embedded, &url, Some(webhooks), dir).await;
    h.account("acct", 1_000).await;
    let thresholds = vec![threshold("low", When::AvailableBelow(500))];
    let request = pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds };
    h.admin.clone().set_alert_thresholds(request).await.unwrap();
    h.hold("acct", "ann", 600).await;
    let pass = alerts.pass(&h.engine, &store).await.unwrap();
    assert_eq!(pass.fired, 1, "{pass:?}");

    let list = pb::ListAlertsRequest { account_id: "acct".into(), page_size: 0, page_token: String::new() };
    let settled = |alert: &pb::Alert| {
        alert.deliveries.len() == 3
            && alert.deliveries.iter().all(|delivery| delivery.state() != pb::DeliveryState::Pending)
    };
    eventually("both deliveries settle", Duration::from_secs(20), async || {
        settled(&h.admin.clone().list_alerts(list.clone()).await.unwrap().into_inner().alerts[0])
    })
    .await;
    let alert = h.admin.clone().list_alerts(list).await.unwrap().into_inner().alerts.remove(0);
    let origin = |url: &str| format!("{}/…", &url[..url.find("/hook").unwrap()]);
    let by_url = |url: &str| alert.deliveries.iter().find(|delivery| delivery.url == origin(url)).unwrap().clone();
    let (taken, refused, redirected) = (by_url(&flaky), by_url(&broken), by_url(&moved));
    assert_eq!(redirected.state(), pb::DeliveryState::Failed);
    assert!(redirected.last_error.contains("redirects are not followed"), "{redirected:?}");
    assert_eq!((taken.state(), taken.attempts, taken.delivered_unix_ms > 0), (pb::DeliveryState::Delivered, 3, true));
    assert_eq!((refused.state(), refused.attempts), (pb::DeliveryState::Failed, 3));
    assert!(refused.last_error.contains("500"), "{refused:?}");
    assert!(!taken.url.contains("secret-token"), "the path is not shown: {}", taken.url);

    // Every post of the alert, to either webhook, carries the same event id, a body in format 1,
    // and a signature the receiver can check with the shared secret.
    let mut posts: Vec<_> = flaky_got.lock().unwrap().clone();
    posts.extend(broken_got.lock().unwrap().iter().cloned());
    posts.extend(moved_got.lock().unwrap().iter().cloned());
    assert_eq!(posts.len(), 9);
    for (event_id, timestamp, signed, body) in posts {
        assert_eq!(event_id, alert.event_id);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((json["format"].as_u64(), json["event_id"].as_str()), (Some(1), Some(alert.event_id.as_str())));
        assert_eq!((json["observed"].as_i64(), json["base"].as_i64()), (Some(400), Some(500)));
        assert_eq!(signed, signature(&secret, timestamp.parse().unwrap(), &body));
        assert_ne!(signed, signature(b"another secret", timestamp.parse().unwrap(), &body));
    }
    h.stop().await;
}

/// The alert tables through PostgreSQL (the rest of this module runs on SQLite): recorded once,
/// a redefined threshold fires again, paging, and a delivery's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_deliveries_on_postgresql() {
    use axum::http::StatusCode;
    use credit_sidecar::alerts::Webhooks;
    use pb::alert_threshold::When;
    let postgres = crate::servers::PostgresServer::start();
    let (hook, got) = receiver(0, StatusCode::OK).await;
    let webhooks =
        Webhooks { urls: vec![hook], secret: b"k".to_vec(), attempts_max: 3, backoff: Duration::from_millis(20) };
    let a = alerting_on(EngineKind::Redis, &postgres.fresh_url(), Some(webhooks), tempfile::tempdir().unwrap()).await;
    a.h.account("acct", 1_000).await;
    let set = |thresholds| pb::SetAlertThresholdsRequest { account_id: "acct".into(), thresholds };
    let low = vec![threshold("low", When::AvailableBelow(500)), threshold("empty", When::Depleted(true))];
    a.h.admin.clone().set_alert_thresholds(set(low)).await.unwrap();
    a.reserve("ann", "enrichment", 600).await;
    assert_eq!(a.pass().await, ["low"]);
    assert_eq!(a.pass().await, Vec::<String>::new());
    assert_eq!(Alerts::default().pass(&a.h.engine, &a.store).await.unwrap().fired, 0, "recorded once");
    a.h.admin.clone().set_alert_thresholds(set(vec![threshold("low", When::AvailableBelow(450))])).await.unwrap();
    assert_eq!(a.pass().await, ["low"], "redefined: another threshold");
    let first = a.list(1, "").await;
    let second = a.list(1, &first.next_page_token).await;
    assert_eq!(first.alerts.len() + second.alerts.len(), 2);
    assert_ne!(first.alerts[0].event_id, second.alerts[0].event_id);
    assert!(a.list(1, &second.next_page_token).await.alerts.is_empty());
    eventually("both alerts delivered", Duration::from_secs(20), async || got.lock().unwrap().len() == 2).await;
    eventually("their deliveries recorded", Duration::from_secs(20), async || {
        a.list(0, "")
            .await
            .alerts
            .iter()
            .all(|alert| alert.deliveries.len() == 1 && alert.deliveries[0].state() == pb::DeliveryState::Delivered)
    })
    .await;
    a.h.stop().await;
}
