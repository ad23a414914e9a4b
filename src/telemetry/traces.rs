//! OpenTelemetry traces, off unless `otel_endpoint` is set.
//!
//! The spans are `tracing` spans; with an endpoint, `tracing-opentelemetry` turns them into
//! OpenTelemetry spans that the OTLP exporter (gRPC) sends in batches:
//!
//! - `call` (server): one per gRPC call, named `credits.v1.<Service>/<Method>`, with `rpc`,
//!   `account`, `request_id` and `outcome` (`ok`, the decline, or the gRPC code). Its parent is
//!   the caller's span when the request carries a W3C `traceparent`.
//! - `redis` (client): each Redis function call of a call (`FCALL reserve`, …), a child of it.
//! - `durable write`: the embedded engine's wait until the change is in SQL, a child of the call.
//! - `settle batch`: one per settlement batch written to SQL (a root: a batch carries the
//!   events of many calls).
//!
//! Warnings and errors logged inside a span become its events. Without an endpoint no layer is
//! installed: the child spans are `debug` spans that the log filter turns off, so they cost
//! nothing on the hot path.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where traces go and which are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The collector's OTLP/gRPC endpoint: `http://collector:4317`, or `https://…`.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of new traces kept (0.0–1.0); a call whose caller sampled its trace (or not)
    /// follows the caller's decision.
    pub sample_ratio: f64,
    /// PEM CA bundle for an `https://` endpoint signed by a private CA (else the system's roots).
    pub ca_pem: Option<Vec<u8>>,
}

/// Set once traces are exported: the API extracts `traceparent` only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The exporting tracer provider; [`Traces::shutdown`] sends what is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the OTLP exporter and the provider. Needs a Tokio runtime (the exporter's gRPC
    /// channel runs on it); connects lazily, so an absent collector does not stop the start.
    pub(super) fn start(config: &TraceConfig) -> Result<(Self, Tracer), String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&config.endpoint);
        if config.endpoint.starts_with("https://") {
            let tls = tonic::transport::ClientTlsConfig::new();
            let tls = match &config.ca_pem {
                Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build().map_err(|error| format!("otel_endpoint: {error}"))?;
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("credit-sidecar");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
        Ok((Self { provider }, tracer))
    }

    /// Exports the spans still buffered and stops; at the end of the process.
    pub fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "exporting the last spans failed");
        }
    }
}

/// Makes the caller's span (W3C `traceparent` / `tracestate` in the request's metadata) the
/// parent of `span`. Nothing happens when traces are not exported or the caller sent none.
pub fn adopt_caller_span(span: &tracing::Span, metadata: &MetadataMap) {
    if !exporting() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Metadata(metadata)));
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started elsewhere: then it has no
        // OpenTelemetry counterpart to attach to.
        let _ = span.set_parent(parent);
    }
}

/// gRPC metadata as the propagator reads it. Written here because `opentelemetry-http`'s
/// `HeaderExtractor` would add a crate for ten lines, and tonic's metadata is not a HeaderMap.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Which `tracing` spans and events go to OpenTelemetry: this crate's spans down to `debug`
/// (the `call` span and its children), and its warnings and errors, as events of their span.
pub(super) fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target().starts_with("credit_sidecar")
        && if metadata.is_span() {
            *metadata.level() <= tracing::Level::DEBUG
        } else {
            *metadata.level() <= tracing::Level::WARN
        }
}
