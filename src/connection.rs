//! Accepted connections and their idle limit: a connection with no call in flight for
//! `connection_idle_max` is closed, so idle peers (a crashed pool's leftovers, a hostile client
//! that opens connections and sends nothing) cannot pile connections up. HTTP/2 keepalive finds
//! dead peers; this finds live ones that do nothing.
//!
//! Each accepted socket is wrapped in [`Watched`], whose [`Activity`] tonic puts in every
//! request's extensions (as [`ConnectionInfo`]); the gate counts each call in and out of it for
//! as long as its response body lives (so a `Health/Watch` stream keeps its connection). The
//! close is an end of file on the server's reading side, taken only while the socket has nothing
//! to read and nothing was read for a moment ([`READ_GRACE`]: a call whose headers just arrived
//! is counted in before then). A peer that starts a call at that very instant sees UNAVAILABLE,
//! like on any broken connection, and retries on a new one.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// How long after bytes were read a connection is not closed as idle: the call they start is
/// counted in by then. Reads alone (a PING's answer) do not keep a connection open longer.
pub const READ_GRACE: Duration = Duration::from_secs(1);

/// Calls in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) }
    }

    /// Counts a call in; it is counted out when the guard drops.
    pub fn call_started(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(Arc::clone(self))
    }

    /// When the connection will have been idle for `idle_max`; None while a call is in flight.
    fn idle_until(&self, idle_max: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(since + idle_max)
    }
}

/// A call in flight on a connection.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The idle clock restarts when the last call ends (set before the count drops, so the
        // reader never sees no calls with a stale start).
        *self.0.idle_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What tonic puts in each request's extensions for a [`Watched`] connection.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    pub activity: Arc<Activity>,
}

impl ConnectionInfo {
    /// The connection's activity, from a request's extensions (plain or TLS).
    pub fn activity_of(extensions: &http::Extensions) -> Option<Arc<Activity>> {
        let plain = extensions.get::<ConnectionInfo>();
        let tls = || extensions.get::<TlsConnectInfo<ConnectionInfo>>().map(TlsConnectInfo::get_ref);
        plain.or_else(tls).map(|info| Arc::clone(&info.activity))
    }
}

/// An accepted socket that ends (end of file on read) once it has had no call in flight for
/// `idle_max`.
pub struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
    idle_max: Duration,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Watched {
    pub fn new(io: TcpStream, idle_max: Duration) -> Self {
        let timer = Box::pin(tokio::time::sleep(idle_max));
        Self { io, activity: Arc::new(Activity::new()), idle_max, last_read: Instant::now(), timer }
    }
}

impl Connected for Watched {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo { tcp: self.io.connect_info(), activity: Arc::clone(&self.activity) }
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let filled = buf.filled().len();
        if let Poll::Ready(result) = Pin::new(&mut this.io).poll_read(cx, buf) {
            if buf.filled().len() > filled {
                this.last_read = Instant::now();
            }
            return Poll::Ready(result);
        }
        // Nothing to read. Close when idle long enough, otherwise wake up when it may be.
        loop {
            let grace = this.last_read + READ_GRACE.min(this.idle_max);
            let at = this.activity.idle_until(this.idle_max).map(|at| at.max(grace));
            if at.is_some_and(|at| at <= Instant::now()) {
                tracing::debug!(idle_max_ms = this.idle_max.as_millis() as u64, "closing an idle connection");
                return Poll::Ready(Ok(()));
            }
            // With a call in flight, look again after a whole idle period.
            let at = at.unwrap_or_else(|| Instant::now() + this.idle_max);
            if this.timer.deadline() != at {
                this.timer.as_mut().reset(at);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
