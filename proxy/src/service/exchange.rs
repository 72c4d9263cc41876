//! One request's side of a connection, whichever reader has it: pingora's session (HTTP/2,
//! and the HTTP/1 requests the gateway's own reader hands over) or that reader
//! ([`h1::Conn`]). The handlers read the body and write the answer through [`Exchange`] alone,
//! with the same deadline, budget and `100 Continue` rules on both.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use inference::protocol::body::BodyReader;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession as Session;

use super::Ctx;
use crate::admission::budget::{Caps, Held, Over};
use crate::errors::GatewayError;
use crate::http::h1;
use crate::http::names::{
    RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET, X_CACHE, X_MODEL_VARIANT, X_MODEL_VERSION,
    X_REQUEST_ID,
};

pub enum Io<'a> {
    Pingora(&'a mut Session),
    H1(&'a mut h1::Conn),
}

pub struct Exchange<'a> {
    io: Io<'a>,
    /// When the whole body must have come (`limits.body_timeout_ms` after the header).
    body_deadline: Instant,
    body_timeout: Duration,
    /// A pingora HTTP/1 session whose request asked for `100 Continue`, not yet sent.
    continue_owed: bool,
    /// Reading the body failed (its framing, or a deadline): where the next request would
    /// start is unknown, so the connection ends after the answer.
    body_failed: bool,
}

/// Why a body could not be read.
pub enum BodyError {
    /// The body's deadline passed.
    Timeout,
    Failed(String),
}

impl<'a> Exchange<'a> {
    pub fn new(mut io: Io<'a>, body_timeout: Duration) -> Exchange<'a> {
        let continue_owed = match &mut io {
            Io::Pingora(s) => {
                // Pingora waits on a client that stops reading for ever; the gateway's own
                // reader gives up after the same time.
                s.set_write_timeout(Some(h1::WRITE_TIMEOUT));
                !s.is_http2() && !s.is_body_done() && expects_continue(s.req_header())
            }
            Io::H1(_) => false,
        };
        Exchange {
            io,
            body_deadline: Instant::now() + body_timeout,
            body_timeout,
            continue_owed,
            body_failed: false,
        }
    }

    pub fn req_header(&self) -> &RequestHeader {
        match &self.io {
            Io::Pingora(s) => s.req_header(),
            Io::H1(c) => c.req_header(),
        }
    }

    /// The next piece of the body, by the body's deadline.
    pub async fn read_request_body(&mut self) -> Result<Option<Bytes>, BodyError> {
        let read = self.read_some().await;
        self.body_failed |= read.is_err();
        read
    }

    /// Whether reading the body failed: the connection cannot carry another request.
    pub fn body_failed(&self) -> bool {
        self.body_failed
    }

    async fn read_some(&mut self) -> Result<Option<Bytes>, BodyError> {
        let deadline = self.body_deadline;
        match &mut self.io {
            Io::Pingora(s) => {
                if std::mem::take(&mut self.continue_owed) {
                    let header =
                        ResponseHeader::build(100, Some(0)).map_err(|e| BodyError::Failed(e.to_string()))?;
                    s.write_response_header(Box::new(header))
                        .await
                        .map_err(|e| BodyError::Failed(e.to_string()))?;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match pingora_timeout::fast_timeout::fast_timeout(left, s.read_request_body()).await {
                    Err(_) => Err(BodyError::Timeout),
                    Ok(read) => read.map_err(|e| BodyError::Failed(e.to_string())),
                }
            }
            Io::H1(c) => c.read_body(deadline).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    BodyError::Timeout
                } else {
                    BodyError::Failed(e.to_string())
                }
            }),
        }
    }

    pub fn is_body_done(&mut self) -> bool {
        match &mut self.io {
            Io::Pingora(s) => s.is_body_done(),
            Io::H1(c) => c.is_body_done(),
        }
    }

    /// The request waits for `100 Continue` before it sends its body, and did not get it: a
    /// refusal must not wait for that body.
    fn awaits_continue(&self) -> bool {
        match &self.io {
            Io::Pingora(_) => self.continue_owed,
            Io::H1(c) => c.awaits_continue(),
        }
    }

    pub fn is_http2(&self) -> bool {
        matches!(&self.io, Io::Pingora(s) if s.is_http2())
    }

    /// The answer about to be written ends the connection.
    pub fn close_after(&mut self) {
        match &mut self.io {
            Io::Pingora(s) => s.set_keepalive(None),
            Io::H1(c) => c.close_after(),
        }
    }

    pub async fn write_response(&mut self, status: u16, head: &Head<'_>, body: Bytes) -> Result<(), ()> {
        match &mut self.io {
            Io::Pingora(s) => {
                s.write_response_header(Box::new(head.response_header(status)))
                    .await
                    .map_err(drop)?;
                s.write_response_body(body, true).await.map_err(drop)
            }
            Io::H1(c) => c.write_response(status, head, &body).await.map_err(drop),
        }
    }

    /// A gRPC answer: 200 with the gateway's fields as metadata, the message if any, then
    /// `trailers` (grpc-status and the like), which end the stream. Only HTTP/2 carries gRPC.
    pub async fn write_grpc(
        &mut self,
        ctx: &Ctx,
        message: Option<Bytes>,
        trailers: http::HeaderMap,
    ) -> Result<(), ()> {
        let Io::Pingora(s) = &mut self.io else {
            return Err(());
        };
        let head = Head {
            content_type: "application/grpc",
            length: 0,
            ctx,
            extra: &[],
        };
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.headers = head.header_map(false);
        s.write_response_header(Box::new(ResponseHeader::from(parts)))
            .await
            .map_err(drop)?;
        if let Some(m) = message {
            s.write_response_body(m, false).await.map_err(drop)?;
        }
        s.write_response_trailers(trailers).await.map_err(drop)
    }

    pub fn response_status(&self) -> Option<u16> {
        match &self.io {
            Io::Pingora(s) => s.response_written().map(|r| r.status.as_u16()),
            Io::H1(c) => c.response_status(),
        }
    }

    pub fn client_addr(&self) -> Option<&pingora::protocols::l4::socket::SocketAddr> {
        match &self.io {
            Io::Pingora(s) => s.client_addr(),
            Io::H1(c) => c.client_addr(),
        }
    }

    pub fn body_bytes_read(&self) -> usize {
        match &self.io {
            Io::Pingora(s) => s.body_bytes_read(),
            Io::H1(c) => c.body_bytes_read(),
        }
    }

    pub fn body_bytes_sent(&self) -> usize {
        match &self.io {
            Io::Pingora(s) => s.body_bytes_sent(),
            Io::H1(c) => c.body_bytes_sent(),
        }
    }

    /// Reads the whole request body, refusing one over `limit` (413) as soon as it is known,
    /// one that has not come by its deadline (408), and one the in-flight budget cannot hold
    /// (503): every piece is added to `held` as it arrives, so a slow sender holds only what
    /// it sent.
    pub async fn read_body(
        &mut self,
        limit: usize,
        held: &mut Held,
        caps: Caps,
    ) -> Result<Bytes, GatewayError> {
        let declared = content_length(self.req_header()).map(|n| n as u64);
        let mut body = BodyReader::new(limit, declared)?;
        loop {
            match self.read_request_body().await {
                Ok(Some(chunk)) => {
                    let len = chunk.len();
                    body.push(chunk)?;
                    held.grow(len, caps).map_err(|over| GatewayError::Busy {
                        per_key: over == Over::Key,
                    })?;
                    // The usual case, a body that came whole: no further read is asked for.
                    if self.is_body_done() {
                        return Ok(body.finish());
                    }
                }
                Ok(None) => return Ok(body.finish()),
                Err(BodyError::Timeout) => return Err(BodyReader::timed_out(self.body_timeout).into()),
                Err(BodyError::Failed(e)) => return Err(BodyReader::failed(e).into()),
            }
        }
    }
}

fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

pub fn content_length(req: &RequestHeader) -> Option<usize> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bodies up to this size are read and dropped before a refusal, within [`DRAIN_TIMEOUT`].
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads and drops an HTTP/1 request body not yet read, when it declares a length of at most
/// [`DRAIN_MAX_BYTES`] and arrives within [`DRAIN_TIMEOUT`]. True when the connection can
/// carry another request. (HTTP/2 needs none of this: a stream ends on its own.) A body
/// waiting for `100 Continue` is not asked for: the connection closes instead.
pub async fn drain_small_body(session: &mut Exchange<'_>) -> bool {
    if session.is_http2() {
        return true;
    }
    if session.awaits_continue() {
        return false;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_none_or(|n| n > DRAIN_MAX_BYTES) {
        return false;
    }
    let drain = async {
        while session.read_request_body().await.map_err(drop)?.is_some() {}
        Ok::<(), ()>(())
    };
    matches!(tokio::time::timeout(DRAIN_TIMEOUT, drain).await, Ok(Ok(()))) && session.is_body_done()
}

/// After a refusal on a connection that will close, the client's body is read and dropped for
/// at most this long, up to [`LINGER_MAX_BYTES`] (nginx's "lingering close").
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_MAX_BYTES: usize = 4 << 20;

/// Reads what remains of a request body after its answer was sent, before the connection
/// closes. Closing a socket with unread bytes makes the kernel reset the connection, and a
/// reset destroys what the client had received but not yet read: a client still sending a
/// large body would see "connection reset" instead of the 401 or 413 it was sent.
pub async fn linger(session: &mut Exchange<'_>) {
    if session.awaits_continue() {
        // Told nothing, the client sends no body (or sends it after its own wait).
        return;
    }
    let drain = async {
        let mut read = 0;
        while read <= LINGER_MAX_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// An answer's header fields: its type and length, `x-request-id`, the variant and version,
/// the rate-limit state, then `extra` (which replaces a field of the same name).
pub struct Head<'a> {
    pub content_type: &'a str,
    pub length: usize,
    pub ctx: &'a Ctx,
    pub extra: &'a [(&'static str, String)],
}

impl h1::Fields for Head<'_> {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        self.known_fields(true, &mut |name, value| f(name.as_str().as_bytes(), value));
        for (k, v) in self.extra {
            f(k.as_bytes(), v.as_bytes());
        }
    }
}

impl Head<'_> {
    /// The answer's fields but `extra`, with names made once: the one list both writers use.
    /// `with_length`: false for gRPC, whose clients are not told the length of a stream of
    /// messages.
    fn known_fields(&self, with_length: bool, f: &mut dyn FnMut(&HeaderName, &[u8])) {
        let ctx = self.ctx;
        let mut n = itoa::Buffer::new();
        f(&http::header::CONTENT_TYPE, self.content_type.as_bytes());
        if with_length {
            f(&http::header::CONTENT_LENGTH, n.format(self.length).as_bytes());
        }
        f(&X_REQUEST_ID, ctx.request_id.as_bytes());
        if let Some(v) = ctx.variant {
            f(&X_MODEL_VARIANT, v.as_str().as_bytes());
        }
        if let Some(v) = &ctx.model_version {
            f(&X_MODEL_VERSION, v.as_bytes());
        }
        if let Some(c) = ctx.cache {
            f(&X_CACHE, c.as_bytes());
        }
        if let Some(d) = &ctx.rate {
            let replaced = |name: &HeaderName| self.extra.iter().any(|(k, _)| *k == name.as_str());
            for (name, value) in [
                (&RATELIMIT_LIMIT, u64::from(d.limit)),
                (&RATELIMIT_REMAINING, u64::from(d.remaining)),
                (&RATELIMIT_RESET, d.reset_secs),
            ] {
                if !replaced(name) {
                    f(name, n.format(value).as_bytes());
                }
            }
        }
    }

    /// The same fields as a header map, for pingora's sessions (names in lower case, as HTTP/2
    /// requires; a value a header may not hold is left out). The names are made once: parsing
    /// each one per answer cost about 1.5 µs of a gRPC call.
    fn response_header(&self, status: u16) -> ResponseHeader {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        parts.headers = self.header_map(true);
        ResponseHeader::from(parts)
    }

    fn header_map(&self, with_length: bool) -> http::HeaderMap {
        let mut headers = http::HeaderMap::with_capacity(12);
        let mut put = |name: &HeaderName, value: &[u8]| {
            if let Ok(mut v) = HeaderValue::from_bytes(value) {
                // HTTP/2: a value that differs in every answer goes out as a literal HPACK never
                // indexes. Indexed, each one would displace fields that do repeat (the variant,
                // the version) from the 4 KiB table, and the encoder walks every earlier value of
                // the name before it adds one: 5.6 µs of the gateway's CPU per gRPC answer
                // (memcmp and `HeaderBlock::into_encoding` under perf, 2,000 calls/s).
                if name == X_REQUEST_ID || name == RATELIMIT_REMAINING || name == RATELIMIT_RESET {
                    v.set_sensitive(true);
                }
                headers.append(name.clone(), v);
            }
        };
        self.known_fields(with_length, &mut put);
        for (k, v) in self.extra {
            if let Ok(name) = HeaderName::from_bytes(k.as_bytes()) {
                put(&name, v.as_bytes());
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Variant;
    use crate::errors::Decision;

    #[test]
    fn values_that_change_every_answer_are_not_indexed_by_hpack() {
        let ctx = Ctx {
            request_id: "0123456789abcdef".into(),
            variant: Some(Variant::Canary),
            model_version: Some("2".into()),
            rate: Some(Decision {
                allowed: true,
                limit: 100,
                remaining: 99,
                reset_secs: 1,
                retry_after_secs: 0,
                per_second: 100,
            }),
            ..Ctx::default()
        };
        let head = Head {
            content_type: "application/grpc",
            length: 0,
            ctx: &ctx,
            extra: &[],
        };
        let header = head.response_header(200);
        let sensitive = |name: &str| header.headers.get(name).map(HeaderValue::is_sensitive);
        for name in ["x-request-id", "ratelimit-remaining", "ratelimit-reset"] {
            assert_eq!(sensitive(name), Some(true), "{name}");
        }
        for name in [
            "content-type",
            "x-model-variant",
            "x-model-version",
            "ratelimit-limit",
        ] {
            assert_eq!(sensitive(name), Some(false), "{name}");
        }
    }
}
