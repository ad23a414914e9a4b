//! The tower layer every call passes before it reaches a service, in this order:
//!
//! 1. **Deadline**: the client's `grpc-timeout`, capped by `call_timeout_max_ms`, becomes a
//!    [`Deadline`] in the request's extensions; the API answers `UNAVAILABLE` before it when the
//!    store is slow, and the gate answers `DEADLINE_EXCEEDED` when it passes regardless.
//! 2. **Admission**: at most `concurrency_max` calls in flight; one more is refused at once with
//!    `RESOURCE_EXHAUSTED`. Nothing queues, so overload costs callers one round trip.
//! 3. **Authentication**: with tokens configured, `authorization: Bearer <token>` must name a token
//!    with the service's scope (`authorize` for CreditAuthorizer, `admin` for CreditAdmin), else
//!    `UNAUTHENTICATED` / `PERMISSION_DENIED`. The caller goes into the extensions, where the API
//!    checks the accounts it may touch.
//!
//! Health checks pass untouched: probes must work under overload, and `Health/Watch` streams
//! must not be cut by a deadline (shutdown ends them). Reflection needs no token and is not
//! counted against `concurrency_max`, but its streams end at the deadline, so an idle `grpcurl`
//! cannot hold a shutdown open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::api::{Observed, record_unobserved};
use crate::auth::{Refusal, Scope, Tokens};
use crate::config::Limits;
use crate::telemetry;

/// When a call must be answered by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left, less a margin to carry the answer back: the API stops waiting for its store
    /// at this point and answers UNAVAILABLE.
    pub fn budget(&self) -> Duration {
        let left = self.0.saturating_duration_since(Instant::now());
        left.saturating_sub((left / 10).max(Duration::from_millis(1)))
    }
}

#[derive(Clone)]
pub struct GateLayer {
    limits: Limits,
    permits: Arc<Semaphore>,
    tokens: Option<Tokens>,
}

impl GateLayer {
    /// `tokens`: None when authentication is off.
    pub fn new(limits: Limits, tokens: Option<Tokens>) -> Self {
        Self { limits, permits: Arc::new(Semaphore::new(limits.concurrency_max)), tokens }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a path is, for the gate.
enum Route {
    /// Health: no limits, no token.
    Open,
    /// Reflection, and any other path: no token, no admission, but the deadline.
    Bounded,
    Guarded(Scope),
}

fn route(path: &str) -> Route {
    if path.starts_with("/credits.v1.CreditAdmin/") {
        Route::Guarded(Scope::Admin)
    } else if path.starts_with("/credits.v1.") {
        Route::Guarded(Scope::Authorize)
    } else if path.starts_with("/grpc.health.v1.Health/") {
        Route::Open
    } else {
        Route::Bounded
    }
}

/// A response body that ends with DEADLINE_EXCEEDED trailers at `deadline`, so a stream cannot
/// outlive it.
struct UntilDeadline {
    body: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ended: bool,
}

impl UntilDeadline {
    fn new(body: Body, deadline: Instant) -> Self {
        Self { body, deadline: Box::pin(tokio::time::sleep_until(deadline)), ended: false }
    }
}

impl http_body::Body for UntilDeadline {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from(tonic::Code::DeadlineExceeded as i32));
        trailers.insert("grpc-message", http::HeaderValue::from_static("call_timeout_max_ms reached"));
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }
}

/// Counts a call in `credit_sidecar_calls_in_flight` while it lives, however it ends (a call
/// the client cancels is dropped, not finished).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn start() -> Self {
        let gauge = metrics::gauge!(telemetry::CALLS_IN_FLIGHT);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn refuse(status: Status, reason: &'static str) -> http::Response<Body> {
    metrics::counter!(telemetry::REFUSALS, "reason" => reason).increment(1);
    tracing::debug!(reason, message = status.message(), "call refused");
    status.into_http()
}

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.layer.limits;
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.to_str().ok()?))
            .map_or(limits.call_timeout_max, |client| client.min(limits.call_timeout_max));
        let deadline = Instant::now() + timeout;
        let scope = match route(request.uri().path()) {
            Route::Open => return Box::pin(inner.call(request)),
            Route::Bounded => {
                return Box::pin(async move {
                    match tokio::time::timeout_at(deadline, inner.call(request)).await {
                        Ok(Ok(response)) => Ok(response.map(|body| Body::new(UntilDeadline::new(body, deadline)))),
                        Ok(Err(error)) => Err(error),
                        Err(_) => Ok(Status::deadline_exceeded("call_timeout_max_ms reached").into_http()),
                    }
                });
            }
            Route::Guarded(scope) => scope,
        };
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted(format!(
                "overloaded: {} calls in flight (concurrency_max); retry with backoff",
                limits.concurrency_max
            ));
            return Box::pin(std::future::ready(Ok(refuse(status, "overloaded"))));
        };
        if let Some(tokens) = &self.layer.tokens {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token);
            let verdict = match presented {
                None => Err(refuse(
                    Status::unauthenticated("authorization: expected the metadata `authorization: Bearer <token>`"),
                    "unauthenticated",
                )),
                Some(token) => match tokens.current().authenticate(token.trim(), scope) {
                    Ok(caller) => Ok(caller),
                    Err(Refusal::Unknown) => {
                        Err(refuse(Status::unauthenticated("authorization: unknown bearer token"), "unauthenticated"))
                    }
                    Err(Refusal::MissingScope { caller, scope }) => Err(refuse(
                        Status::permission_denied(format!(
                            "authorization: token {caller:?} lacks the scope {}",
                            scope_name(scope)
                        )),
                        "permission_denied",
                    )),
                },
            };
            match verdict {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                }
                Err(response) => return Box::pin(std::future::ready(Ok(response))),
            }
        }
        request.extensions_mut().insert(Deadline(deadline));
        let observed = Observed::default();
        request.extensions_mut().insert(observed.clone());
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let _permit = permit;
            let _in_flight = InFlight::start();
            let started = Instant::now();
            let result = tokio::time::timeout_at(deadline, inner.call(request)).await;
            match result {
                Ok(Ok(response)) => {
                    // A status in the headers is a trailers-only answer: a refusal. One tonic
                    // made before the handler ran (the message did not decode, or was too
                    // large) is counted here; the handler's own answers are counted by the API.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|code| code.to_str().ok()?.parse::<i32>().ok())
                        .map(tonic::Code::from_i32);
                    if let Some(code) = code.filter(|code| *code != tonic::Code::Ok && !observed.was_observed()) {
                        record_unobserved(&path, code, started);
                    }
                    if code == Some(tonic::Code::OutOfRange) {
                        // tonic's answer to a message over request_bytes_max.
                        metrics::counter!(telemetry::REFUSALS, "reason" => "request_too_large").increment(1);
                    }
                    Ok(response)
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Ok(refuse(
                    Status::deadline_exceeded(format!("no answer within {} ms", timeout.as_millis())),
                    "deadline_exceeded",
                )),
            }
        })
    }
}

pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Authorize => "authorize",
        Scope::Admin => "admin",
    }
}

/// Parses a `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_the_spec() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "１S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_pick_the_scope() {
        assert!(matches!(route("/credits.v1.CreditAdmin/Grant"), Route::Guarded(Scope::Admin)));
        assert!(matches!(route("/credits.v1.CreditAuthorizer/Reserve"), Route::Guarded(Scope::Authorize)));
        assert!(matches!(route("/grpc.health.v1.Health/Check"), Route::Open));
        assert!(matches!(route("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Route::Bounded));
    }
}
