//! The tower layer every call passes before it reaches a service, in this order:
//!
//! 1. **Deadline**: the client's `grpc-timeout`, capped by `call_timeout_max_ms`, becomes a
//!    [`Deadline`] in the request's extensions; the API answers `UNAVAILABLE` before it when the
//!    store is slow, and the gate answers `DEADLINE_EXCEEDED` when it passes regardless.
//! 2. **Arrival**: the whole request body must arrive within `request_body_timeout_ms` (and the
//!    deadline), else `DEADLINE_EXCEEDED`; only then does the call count against
//!    `concurrency_max`, so peers that trickle their bodies cannot take the permits of honest
//!    calls.
//! 3. **Admission**: at most `concurrency_max` calls in flight; one more is refused at once with
//!    `RESOURCE_EXHAUSTED`. Nothing queues, so overload costs callers one round trip. The permit
//!    and the deadline hold until the handler answers: a response stream (`WatchAccount`) runs
//!    on without either, bounded by the API's own limit on streams.
//! 4. **Authentication**: with tokens configured, `authorization: Bearer <token>` must name a token
//!    with the service's scope (`authorize` for CreditAuthorizer, `admin` for CreditAdmin), else
//!    `UNAUTHENTICATED` / `PERMISSION_DENIED`. The caller goes into the extensions, where the API
//!    checks the accounts it may touch.
//!
//! Every call, health checks included, counts as activity on its connection (see
//! [`crate::connection`]) until its response body ends.
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

use http_body::Body as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::api::{Deadline, Observed, Refusal, record_unobserved};
use crate::auth::{Rejected, Scope, Tokens};
use crate::connection::{CallGuard, ConnectionInfo};
use crate::telemetry;

/// Bounds on every call and connection (defaults: `config`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest a call may take; a shorter client `grpc-timeout` wins.
    pub call_timeout_max: Duration,
    /// Calls in flight at most; more are refused at once with RESOURCE_EXHAUSTED.
    pub concurrency_max: usize,
    /// The largest request message.
    pub request_bytes_max: usize,
    /// The longest a request's body may take to arrive; it is awaited before the call takes one
    /// of `concurrency_max`, so a peer that trickles its body holds no permit.
    pub request_body_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub connection_idle_max: Duration,
    /// HTTP/2 PINGs this often; a peer that does not answer within the timeout is dropped.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive probes after this long without traffic (dead peers behind NATs).
    pub tcp_keepalive: Duration,
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
    /// The call's time limit, for the refusal's message.
    timeout: Duration,
    ended: bool,
}

impl UntilDeadline {
    fn new(body: Body, deadline: Instant, timeout: Duration) -> Self {
        Self { body, deadline: Box::pin(tokio::time::sleep_until(deadline)), timeout, ended: false }
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
        let status = Refusal::DeadlineExceeded { timeout: self.timeout }.answer();
        let mut trailers = http::HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(status)));
        }
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

/// Counts the refusal and answers it.
fn refuse(refusal: Refusal) -> http::Response<Body> {
    refusal.status().into_http()
}

impl<S> Service<http::Request<Body>> for Gate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
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
        // The call keeps its connection from counting as idle until its response body ends.
        let on_connection = ConnectionInfo::activity_of(request.extensions()).map(|activity| activity.call_started());
        let scope = match route(request.uri().path()) {
            Route::Open => {
                return Box::pin(async move { Ok(tracked(inner.call(request).await?, on_connection)) });
            }
            Route::Bounded => {
                return Box::pin(async move {
                    match tokio::time::timeout_at(deadline, inner.call(request)).await {
                        Ok(Ok(response)) => {
                            let response = response.map(|body| Body::new(UntilDeadline::new(body, deadline, timeout)));
                            Ok(tracked(response, on_connection))
                        }
                        Ok(Err(error)) => Err(error),
                        Err(_) => Ok(Refusal::DeadlineExceeded { timeout }.answer().into_http()),
                    }
                });
            }
            Route::Guarded(scope) => scope,
        };
        let layer = self.layer.clone();
        Box::pin(async move {
            let request = match arrive(request, limits, deadline, timeout).await {
                Ok(request) => request,
                Err(refused) => return Ok(refused),
            };
            let response = match admit(&layer, scope, request) {
                Ok((request, permit)) => serve(inner, request, permit, deadline, timeout).await?,
                Err(refused) => *refused,
            };
            Ok(tracked(response, on_connection))
        })
    }
}

/// Waits (until `request_body_timeout_ms`, and the call's deadline) for the whole request body
/// before the call may take a permit: a peer that trickles its body holds no permit while it
/// does. The body is buffered up to `request_bytes_max` (and a frame header); a larger one goes
/// on unread, for tonic to refuse.
async fn arrive(
    request: http::Request<Body>,
    limits: Limits,
    deadline: Instant,
    timeout: Duration,
) -> Result<http::Request<Body>, http::Response<Body>> {
    let body_deadline = deadline.min(Instant::now() + limits.request_body_timeout);
    let (parts, mut body) = request.into_parts();
    let bytes_max = limits.request_bytes_max + GRPC_FRAME_HEADER_LEN;
    let buffer = async {
        let mut frames = std::collections::VecDeque::new();
        let mut bytes = 0;
        while bytes <= bytes_max {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return Ok(Replay { frames, rest: None }),
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    bytes += frame.data_ref().map_or(0, bytes::Bytes::len);
                    frames.push_back(frame);
                }
            }
        }
        Ok(Replay { frames, rest: Some(body) })
    };
    match tokio::time::timeout_at(body_deadline, buffer).await {
        Ok(Ok(body)) => Ok(http::Request::from_parts(parts, Body::new(body))),
        Ok(Err(status)) => Err(refuse(Refusal::RequestBroken(status.message().to_owned()))),
        Err(_) if body_deadline < deadline => {
            Err(refuse(Refusal::RequestTooSlow { timeout: limits.request_body_timeout }))
        }
        Err(_) => Err(refuse(Refusal::DeadlineExceeded { timeout })),
    }
}

/// The length of a gRPC message's frame header (flag and length).
const GRPC_FRAME_HEADER_LEN: usize = 5;

/// Admission, then authentication: a permit of `concurrency_max` (none left: refused at once),
/// and with tokens configured, the caller in the request's extensions.
fn admit(
    layer: &GateLayer,
    scope: Scope,
    mut request: http::Request<Body>,
) -> Result<(http::Request<Body>, OwnedSemaphorePermit), Box<http::Response<Body>>> {
    let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
        return Err(Box::new(refuse(Refusal::Overloaded { concurrency_max: layer.limits.concurrency_max })));
    };
    if let Some(tokens) = &layer.tokens {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token);
        let caller = match presented {
            None => Err(Refusal::NoToken),
            Some(token) => tokens.current().authenticate(token.trim(), scope).map_err(|rejected| match rejected {
                Rejected::Unknown => Refusal::UnknownToken,
                Rejected::MissingScope { caller, scope } => Refusal::MissingScope { caller, scope: scope_name(scope) },
            }),
        }
        .map_err(|refusal| Box::new(refuse(refusal)))?;
        request.extensions_mut().insert(caller);
    }
    Ok((request, permit))
}

/// Runs an admitted call within its deadline, and counts what tonic refused before a handler ran.
async fn serve<S>(
    mut inner: S,
    mut request: http::Request<Body>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
    timeout: Duration,
) -> Result<http::Response<Body>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    request.extensions_mut().insert(Deadline(deadline));
    let observed = Observed::default();
    request.extensions_mut().insert(observed.clone());
    let path = request.uri().path().to_owned();
    let _permit = permit;
    let _in_flight = InFlight::start();
    let started = Instant::now();
    match tokio::time::timeout_at(deadline, inner.call(request)).await {
        Ok(Ok(response)) => {
            // A status in the headers is a trailers-only answer: a refusal. One tonic made before
            // the handler ran (the message did not decode, or was too large) is counted here;
            // the handler's own answers are counted by the API.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|code| code.to_str().ok()?.parse::<i32>().ok())
                .map(tonic::Code::from_i32);
            if let Some(code) = code.filter(|code| *code != tonic::Code::Ok && !observed.was_observed()) {
                record_unobserved(&path, code, started);
            }
            if code == Some(tonic::Code::OutOfRange) && !observed.was_observed() {
                // tonic's answer to a message over request_bytes_max, given before any handler
                // ran (so nothing was sent yet): answered again as the refusal, with its details.
                let why = Status::from_header_map(response.headers()).map(|status| status.message().to_owned());
                // Counted already (just above) as an answer before the handler.
                return Ok(refuse(Refusal::RequestTooLarge { why: why.unwrap_or_default() }));
            }
            Ok(response)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Ok(refuse(Refusal::DeadlineExceeded { timeout })),
    }
}

/// A request body already read (its frames replayed in order), then whatever was left unread.
struct Replay {
    frames: std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    rest: Option<Body>,
}

impl http_body::Body for Replay {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(http_body::Body::is_end_stream)
    }
}

/// A response body that keeps its call counted on its connection until it ends.
struct Tracked {
    body: Body,
    _call: CallGuard,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn tracked(response: http::Response<Body>, call: Option<CallGuard>) -> http::Response<Body> {
    match call {
        Some(call) => response.map(|body| Body::new(Tracked { body, _call: call })),
        None => response,
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
