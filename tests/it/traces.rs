//! OpenTelemetry traces from the real binary, received by a small OTLP/gRPC collector this test
//! starts (the `TraceService` of `opentelemetry-proto`, over a real socket): the call spans with
//! their caller's `traceparent`, account, operation and outcome, their Redis and durable-write
//! children, settlement batches, sampling, the flush at a graceful stop, and a collector that is
//! not there.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::harness::{eventually, plan_request, reserve_request};
use crate::process::{Sidecar, Workdir, now_ms};
use crate::servers::{RedisServer, free_port};

/// How long spans may take to arrive (the exporter sends a batch every 50 ms in these tests).
const ARRIVAL: Duration = Duration::from_secs(20);

/// One exported span, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<KeyValue>,
    status: i32,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        let value = self.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
        Some(match value {
            AnyValue::StringValue(text) => text.clone(),
            AnyValue::IntValue(number) => number.to_string(),
            AnyValue::BoolValue(flag) => flag.to_string(),
            other => format!("{other:?}"),
        })
    }
}

/// The collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref().cloned())
                .map(|value| match value {
                    AnyValue::StringValue(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: span.attributes,
                        status: span.status.map_or(0, |status| status.code),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a port the kernel picks.
    async fn start() -> (Self, SocketAddr) {
        Self::start_with(tonic::transport::Server::builder()).await
    }

    /// Serves OTLP/gRPC over TLS with `identity` (certificate and key, PEM).
    async fn start_tls(identity: &(String, String)) -> (Self, SocketAddr) {
        let identity = tonic::transport::Identity::from_pem(&identity.0, &identity.1);
        let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        Self::start_with(tonic::transport::Server::builder().tls_config(tls).unwrap()).await
    }

    async fn start_with(mut server: tonic::transport::Server) -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            server.add_service(service).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, address)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span satisfies `wanted`, and returns it.
    async fn span(&self, what: &str, wanted: impl Fn(&Received) -> bool) -> Received {
        eventually(what, ARRIVAL, async || self.spans().iter().any(&wanted)).await;
        self.spans().into_iter().find(wanted).unwrap()
    }
}

/// The sidecar exporting to `collector`, batches sent every 50 ms (the SDK's standard
/// `OTEL_BSP_SCHEDULE_DELAY`, which the sidecar leaves to the SDK).
fn traced_command(work: &Workdir, collector: SocketAddr, schedule_delay_ms: u64) -> std::process::Command {
    let mut command = work.command();
    command
        .env("CREDIT_SIDECAR_OTEL_ENDPOINT", format!("http://{collector}"))
        .env("CREDIT_SIDECAR_OTEL_SERVICE_NAME", "credits-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_ms.to_string());
    command
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A Reserve request carrying `traceparent` in its metadata.
fn with_traceparent<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

async fn clients(channel: Channel) -> (CreditAuthorizerClient<Channel>, CreditAdminClient<Channel>) {
    (CreditAuthorizerClient::new(channel.clone()), CreditAdminClient::new(channel))
}

/// On the Redis engine: the call span continues the caller's trace (its parent is the caller's
/// span), names the RPC and carries the account and the outcome; the Redis function call is its
/// child; a decline and a refused request are spans too, with their outcome; a caller that did
/// not sample its trace gets none exported; settlement batches are spans of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_continue_the_callers_trace_with_redis_and_settlement_spans() {
    let (collector, address) = Collector::start().await;
    let redis = RedisServer::start();
    let work = Workdir::new();
    let mut command = traced_command(&work, address, 50);
    command.args(["--redis-url", &redis.url()]);
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    let (mut authorizer, mut admin) = clients(serving.channel().await).await;
    admin.set_plan(plan_request("acct-traced", 100, now_ms() - 86_400_000, "plan-1")).await.unwrap();

    let unsampled_trace = "0af7651916cd43dd8448eb211c80319d";
    let unsampled = with_traceparent(
        reserve_request("acct-traced", 5, "hold-unsampled"),
        &format!("00-{unsampled_trace}-b7ad6b7169203331-00"),
    );
    assert_eq!(authorizer.reserve(unsampled).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);

    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let sampled =
        with_traceparent(reserve_request("acct-traced", 10, "hold-sampled"), &format!("00-{trace}-{parent}-01"));
    assert_eq!(authorizer.reserve(sampled).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
    let declined = authorizer.reserve(reserve_request("acct-traced", 1_000, "hold-too-big")).await.unwrap();
    assert_eq!(declined.into_inner().outcome(), pb::Outcome::InsufficientCredit);
    let refused = pb::CommitRequest { reservation_id: "not a reservation".into(), ..Default::default() };
    let status = authorizer.commit(refused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let call = collector
        .span("the sampled Reserve's span", |span| {
            hex(&span.trace_id) == trace && span.name == "credits.v1.CreditAuthorizer/Reserve"
        })
        .await;
    assert_eq!(hex(&call.parent_span_id), parent, "the caller's span is the parent: {call:?}");
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.service, "credits-under-test");
    assert_eq!(call.attribute("account").as_deref(), Some("acct-traced"));
    assert_eq!(call.attribute("rpc").as_deref(), Some("Reserve"));
    assert_eq!(call.attribute("request_id").as_deref(), Some("hold-sampled"));
    assert_eq!(call.attribute("outcome").as_deref(), Some("ok"));
    assert_ne!(call.status, StatusCode::Error as i32);

    let script = collector
        .span("the Reserve's Redis call", |span| span.trace_id == call.trace_id && span.name == "FCALL reserve")
        .await;
    assert_eq!(script.parent_span_id, call.span_id, "the Redis call is the call span's child");
    assert_eq!(script.kind, SpanKind::Client as i32);
    assert_eq!(script.attribute("db.system").as_deref(), Some("redis"));

    let decline = collector
        .span("the declined Reserve's span", |span| span.attribute("request_id").as_deref() == Some("hold-too-big"))
        .await;
    assert_eq!(decline.attribute("outcome").as_deref(), Some("insufficient_credit"));
    assert!(decline.parent_span_id.is_empty(), "no traceparent: a trace of its own: {decline:?}");
    assert_ne!(decline.trace_id, call.trace_id);
    let invalid =
        collector.span("the refused Commit's span", |span| span.name == "credits.v1.CreditAuthorizer/Commit").await;
    assert_eq!(invalid.attribute("outcome").as_deref(), Some("invalid_argument"));
    assert_ne!(invalid.status, StatusCode::Error as i32, "a caller's mistake is not the server's error");

    let batch = collector
        .span("a settlement batch", |span| {
            span.name == "settle batch" && span.attribute("events").is_some_and(|events| events != "0")
        })
        .await;
    assert!(batch.parent_span_id.is_empty(), "a batch is a trace of its own: {batch:?}");
    assert!(batch.attribute("attempts").is_some(), "{batch:?}");

    // Spans are exported in the order they end; the unsampled call ended before all of the above.
    let spans = collector.spans();
    assert!(
        !spans.iter().any(|span| hex(&span.trace_id) == unsampled_trace),
        "the caller did not sample its trace, so nothing of it is exported: {spans:#?}"
    );
    let hold_unsampled = spans.iter().any(|span| span.attribute("request_id").as_deref() == Some("hold-unsampled"));
    assert!(!hold_unsampled, "{spans:#?}");

    // A failure that is the server's: the span is an error, with the status's message.
    redis.pause();
    let mut hung = tonic::Request::new(reserve_request("acct-traced", 1, "hold-hung"));
    hung.set_timeout(Duration::from_millis(300));
    let status = authorizer.reserve(hung).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    redis.resume();
    let failed = collector
        .span("the failed Reserve's span", |span| span.attribute("request_id").as_deref() == Some("hold-hung"))
        .await;
    assert_eq!(failed.attribute("outcome").as_deref(), Some("unavailable"));
    assert_eq!(failed.status, StatusCode::Error as i32, "{failed:?}");
    drop(sidecar);
}

/// On the embedded engine: the wait until a change is in SQL is the call's child; with batches
/// sent only once a minute, a graceful stop (SIGTERM) still exports what is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_exports_the_buffered_spans() {
    let (collector, address) = Collector::start().await;
    let work = Workdir::new();
    let mut sidecar = Sidecar::spawn(traced_command(&work, address, 60_000));
    let serving = sidecar.serving().await;
    let (mut authorizer, mut admin) = clients(serving.channel().await).await;
    admin.set_plan(plan_request("acct-embedded", 50, now_ms() - 86_400_000, "plan-1")).await.unwrap();
    let reserved = authorizer.reserve(reserve_request("acct-embedded", 5, "hold-1")).await.unwrap();
    assert_eq!(reserved.into_inner().outcome(), pb::Outcome::Ok);
    assert!(collector.spans().is_empty(), "nothing is sent before the minute is up");

    sidecar.terminate();
    assert!(sidecar.exit_status().await.success(), "{}", sidecar.transcript());
    let spans = collector.spans();
    let call = spans
        .iter()
        .find(|span| span.attribute("request_id").as_deref() == Some("hold-1"))
        .unwrap_or_else(|| panic!("the Reserve's span was exported at the stop: {spans:#?}"));
    assert_eq!(call.attribute("outcome").as_deref(), Some("ok"));
    let durable = spans.iter().find(|span| span.name == "durable write" && span.trace_id == call.trace_id);
    let durable = durable.unwrap_or_else(|| panic!("the durable write is the call's child: {spans:#?}"));
    assert_eq!(durable.parent_span_id, call.span_id);
}

/// A collector that is not there costs the calls nothing: they are answered, and the process
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_collector_does_not_stop_the_calls() {
    let work = Workdir::new();
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut sidecar = Sidecar::spawn(traced_command(&work, nowhere, 50));
    let serving = sidecar.serving().await;
    let (mut authorizer, mut admin) = clients(serving.channel().await).await;
    admin.set_plan(plan_request("acct-alone", 50, now_ms() - 86_400_000, "plan-1")).await.unwrap();
    for n in 0..20 {
        // Each call within a deadline: the exporter's trouble must not hold it up.
        let mut request = tonic::Request::new(reserve_request("acct-alone", 1, format!("hold-{n}")));
        request.set_timeout(Duration::from_secs(2));
        let reserved = authorizer.reserve(request).await.unwrap();
        assert_eq!(reserved.into_inner().outcome(), pb::Outcome::Ok);
    }
    let balance = authorizer
        .get_balance(pb::GetBalanceRequest { account_id: "acct-alone".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(balance.into_inner().totals.unwrap().held, 20);
}

/// An `https://` collector signed by a private CA: verified against `otel_ca_file`, and sent
/// the spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_is_verified_against_the_ca_file() {
    let pki = crate::harness::pki();
    let (collector, address) = Collector::start_tls(&pki.server).await;
    let work = Workdir::new();
    let ca = work.path().join("collector-ca.pem");
    std::fs::write(&ca, &pki.ca).unwrap();
    let mut command = work.command();
    command
        .env("CREDIT_SIDECAR_OTEL_ENDPOINT", format!("https://localhost:{}", address.port()))
        .env("CREDIT_SIDECAR_OTEL_CA_FILE", &ca)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    let (mut authorizer, _) = clients(serving.channel().await).await;
    let quote = pb::QuoteRequest { account_id: "acct-tls".into(), ..Default::default() };
    let _ = authorizer.quote(quote).await;
    let span =
        collector.span("the Quote's span over TLS", |span| span.name == "credits.v1.CreditAuthorizer/Quote").await;
    assert_eq!(span.attribute("account").as_deref(), Some("acct-tls"));
    assert_eq!(span.service, "credit-sidecar", "the default service.name");
}
