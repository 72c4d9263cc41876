//! Connections, as pingora hands them to the gateway after the TLS handshake: HTTP/2 ones to
//! pingora's session (one [`HttpServerApp::process_new_http`] per stream), HTTP/1 ones to
//! the gateway's own reader ([`h1::Conn`]), which serves each request it can read itself and
//! hands the others, one at a time, to a pingora session, then takes the connection back.
//! So every HTTP/1 request meets the same deadlines, and draining works alike for all.
//!
//! **Draining** (SIGTERM, or the old process of an upgrade): a kept-alive HTTP/1.1 connection
//! finishes the request in flight, and answers the next one with `Connection: close`; one
//! that sends nothing for [`DRAIN_IDLE`] is closed then. (HTTP/1.1 cannot tell an idle client
//! that the server is about to close, so a request sent at that very moment can cross the
//! close on the wire; clients retry such requests on a new connection where they may, RFC
//! 9112 9.3.1. Waiting a moment first leaves that race to clients idle for a second.) HTTP/2
//! connections get a GOAWAY, and the streams in flight finish (pingora's accept loop).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use inference::InferError;
use pingora::ErrorType;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;

use super::exchange::{Exchange, Io};
use super::{Ctx, Gateway};
use crate::admission::auth;
use crate::errors::GatewayError;
use crate::http::coalesce::Coalesced;
use crate::http::h1;
use crate::http::names::X_REQUEST_ID;

/// While draining, an HTTP/1.1 connection that sends nothing for this long is closed.
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Shutdown, as seen by connections idle between requests.
#[derive(Default)]
pub struct Closing {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Closing {
    pub fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn started(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Returns once shutdown has begun.
    async fn wait(&self) {
        // Created before the flag is read: `notify_waiters` reaches it even before it is polled.
        let notified = self.notify.notified();
        if self.started() {
            return;
        }
        notified.await;
    }
}

/// pingora's HTTP/2 sessions close after this long without a stream (and get the limits'
/// idle timeout instead when the gateway is built).
pub fn server_options(idle: Duration) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(idle);
    options
}

impl Gateway {
    /// One request of a pingora session: read within `header_by`, served, logged. The
    /// session is left to the caller (to finish, or to drop).
    async fn pingora_request(&self, session: &mut Session, header_by: Instant, shutdown: &ShutdownWatch) {
        // An HTTP/2 stream's header has come already; an HTTP/1 request handed over is one
        // whose first bytes have: either is served, draining or not.
        let left = header_by.saturating_duration_since(Instant::now());
        let read = pingora_timeout::fast_timeout::fast_timeout(left, session.read_request()).await;
        match read {
            Err(_) => {
                self.metrics
                    .connection_timeouts
                    .with_label_values(&["header"])
                    .inc();
                return;
            }
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return,
            Ok(Err(e)) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    self.refuse_unparsed(session).await;
                } else {
                    tracing::debug!("reading a request failed: {:?}", e.etype());
                }
                return;
            }
        }
        if *shutdown.borrow() || self.closing.started() {
            // Shutting down: this answer tells the client not to reuse the connection.
            session.set_keepalive(None);
        }
        if session.req_header().method == http::Method::CONNECT {
            // CONNECT changes how the rest of the connection is framed: answer, then close.
            session.set_keepalive(None);
        }
        let body_timeout = self.state.load().config.limits.body_timeout;
        let mut ctx = Ctx {
            key_memo: match session.take_connection_user_context() {
                Some(memo) => memo.downcast().ok(),
                None if session.is_http2() => Some(auth::thread_memo()),
                None => Some(Box::default()),
            },
            ..Ctx::default()
        };
        let mut exchange = Exchange::new(Io::Pingora(session), body_timeout);
        self.serve(&mut exchange, &mut ctx).await;
        self.log(&exchange, &ctx);
        match ctx.key_memo.take() {
            Some(memo) if session.is_http2() => auth::return_thread_memo(memo),
            Some(memo) => session.set_connection_user_context(Some(memo)),
            None => {}
        }
    }

    /// A request pingora could not parse: the same JSON error as everything else, then the
    /// connection closes (where the next request would start is unknown). The message never
    /// quotes the request: its bytes may hold an API key.
    async fn refuse_unparsed(&self, session: &mut Session) {
        let error: GatewayError = InferError::bad_request(
            "malformed request: its request line or a header field could not be parsed",
        )
        .into();
        let body = Bytes::from(error.body());
        let Ok(mut header) = ResponseHeader::build_no_case(error.status(), Some(4)) else {
            return;
        };
        let _ = header.append_header(http::header::CONTENT_TYPE, "application/json");
        let _ = header.append_header(http::header::CONTENT_LENGTH, body.len());
        let _ = header.append_header(X_REQUEST_ID, inference::protocol::request_id::new_request_id());
        let _ = session.write_error_response(header, body).await;
        self.metrics.errors.with_label_values(&[error.kind()]).inc();
    }

    /// An HTTP/1 connection, read by the gateway's own reader. A request it does not serve
    /// goes, with the bytes already read, to a pingora session for that one request; the
    /// connection then comes back here, with whatever the client sent after it.
    async fn serve_h1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut conn = h1::Conn::new(stream);
        let mut memo: Option<Box<crate::admission::auth::KeyMemo>> = Some(Box::default());
        loop {
            let limits = self.state.load().config.limits.clone();
            let draining = self.closing.started();
            let waits = h1::Waits {
                idle: if draining { DRAIN_IDLE } else { limits.idle_timeout },
                header: limits.header_timeout,
                max_header_bytes: limits.max_header_bytes,
            };
            let next = if draining {
                conn.next_request(waits).await
            } else {
                tokio::select! {
                    // Biased: a request already buffered is served even when shutdown has begun.
                    biased;
                    next = conn.next_request(waits) => next,
                    // Draining from now: wait for the next request with the drain's patience.
                    _ = self.closing.wait() => continue,
                }
            };
            let timed_out = |phase: &str| {
                self.metrics.connection_timeouts.with_label_values(&[phase]).inc();
            };
            match next {
                h1::Next::Request => {}
                h1::Next::Closed => return None,
                h1::Next::Idle => {
                    if !draining {
                        timed_out("idle");
                    }
                    conn.shutdown().await;
                    return None;
                }
                h1::Next::HeaderTimeout => {
                    timed_out("header");
                    let ms = limits.header_timeout.as_millis();
                    conn.refuse(
                        408,
                        &format!("the request's header did not arrive within {ms} ms"),
                    )
                    .await;
                    conn.shutdown().await;
                    return None;
                }
                h1::Next::HeaderTooLarge => {
                    let e = GatewayError::HeadersTooLarge {
                        limit: limits.max_header_bytes,
                    };
                    self.metrics.errors.with_label_values(&[e.kind()]).inc();
                    conn.refuse(431, &e.to_string()).await;
                    conn.shutdown().await;
                    return None;
                }
                h1::Next::Handoff => {
                    let header_by = conn
                        .header_started()
                        .unwrap_or_else(Instant::now)
                        .checked_add(limits.header_timeout)
                        .unwrap_or_else(Instant::now);
                    let (stream, read) = conn.into_handoff();
                    let (stream, unread) = unwrap_coalesced(stream);
                    let prefix = if unread.is_empty() {
                        read
                    } else {
                        Bytes::from([&read[..], &unread[..]].concat())
                    };
                    let stream: Stream = Box::new(Coalesced::with_prefix(stream, prefix));
                    let mut session = Session::new_http1(stream);
                    session.set_keepalive(Some(limits.idle_timeout.as_secs()));
                    if let Some(m) = memo.take() {
                        session.set_connection_user_context(Some(m as Box<dyn std::any::Any + Send + Sync>));
                    }
                    self.pingora_request(&mut session, header_by, shutdown).await;
                    memo = session
                        .take_connection_user_context()
                        .and_then(|m| m.downcast().ok());
                    let reusable = session.finish().await.ok().flatten()?;
                    let (stream, pipelined) = reusable.into_parts();
                    conn = h1::Conn::with_buffer(stream, pipelined.as_deref().unwrap_or_default());
                    continue;
                }
            }
            if draining || *shutdown.borrow() {
                // Shutting down: this answer tells the client not to reuse the connection.
                conn.close_after();
            }
            let mut ctx = Ctx {
                key_memo: memo.take(),
                ..Ctx::default()
            };
            let mut exchange = Exchange::new(Io::H1(&mut conn), limits.body_timeout);
            self.serve(&mut exchange, &mut ctx).await;
            self.log(&exchange, &ctx);
            memo = ctx.key_memo.take();
            if !conn.reusable() {
                conn.shutdown().await;
                return None;
            }
        }
    }
}

/// A stream that went to a pingora session once already comes back wrapped in [`Coalesced`];
/// it is unwrapped (with the bytes it still had to replay) before it is wrapped again, so
/// that a connection of many handed-over requests does not pile wrappers up.
fn unwrap_coalesced(stream: Stream) -> (Stream, Bytes) {
    if !stream.as_any().is::<Coalesced>() {
        return (stream, Bytes::new());
    }
    match stream.into_any().downcast::<Coalesced>() {
        Ok(c) => c.into_parts(),
        Err(_) => unreachable!("checked above"),
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    /// Called by pingora for each HTTP/2 stream.
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let header_by = Instant::now() + self.state.load().config.limits.header_timeout;
        self.pingora_request(&mut session, header_by, shutdown).await;
        let _ = session.finish().await;
        None
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }

    /// Pingora calls this when shutdown begins.
    async fn http_cleanup(&self) {
        self.closing.start();
    }
}

/// What pingora's listener runs: HTTP/2 connections go to pingora's session, HTTP/1 ones to
/// the gateway's own reader first ([`Gateway::serve_h1`]).
pub struct Front(pub Arc<Gateway>);

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // The TLS handshake is done: its deadline no longer applies.
        self.0
            .connections
            .established(stream.get_socket_digest().as_ref());
        match stream.selected_alpn_proto() {
            Some(ALPN::H2) => self.0.process_new(stream, shutdown).await,
            _ => self.0.serve_h1(stream, shutdown).await,
        }
    }

    async fn cleanup(&self) {
        self.0.http_cleanup().await;
    }
}
