//! The gateway's own HTTP/1.1 reader and writer, for the requests that make up nearly all of
//! its traffic; pingora's HTTP/1 session for everything else.
//!
//! pingora's session builds two header maps per request (one keeps the case of names), checks
//! the request again, serializes the answer from a header map, and is made anew for every
//! request of a kept-alive connection. Measured with callgrind on the proxy benchmark, that
//! was about a sixth of a proxied request's instructions. Here a request is parsed by httparse
//! (as pingora does) into one header map whose values point into the bytes read, its body is
//! read by its `Content-Length`, and its answer leaves in one write (one TLS record).
//!
//! Only plain requests are read here: HTTP/1.1, `GET` or `POST`, an origin-form target, a
//! header block under [`FAST_HEADER_BYTES`], at most one `Host` (without `@`), one
//! `Content-Length` of digits or none, no `Transfer-Encoding` or `Upgrade`, and no `Expect`
//! but `100-continue`. For any other request (or one httparse refuses), the connection and
//! the bytes already read go to pingora's session ([`Next::Handoff`]) for that request, whose
//! rules and errors apply to it.
//!
//! Deadlines ([`Waits`]): a connection with no request in flight waits `idle` for the next
//! one; once its first byte has come, the whole header block must arrive within `header`
//! ([`Next::HeaderTimeout`]: 408), however slowly it trickles; each body has its own deadline
//! ([`Conn::read_body`]). A header block over `max_header_bytes` is refused as soon as that
//! many bytes have come ([`Next::HeaderTooLarge`]: 431), before any more is read.

use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::names::{X_API_KEY, X_CANARY, X_REQUEST_ID};

/// Header blocks up to this size are read here; a larger one goes to pingora's session (and
/// meets the gateway's own 431 there, or pingora's limit).
pub const FAST_HEADER_BYTES: usize = 16 * 1024;
/// At most this many header lines; more go to pingora's session.
const MAX_HEADERS: usize = 64;
/// What pingora's session takes (its `MAX_HEADERS`).
const PINGORA_MAX_HEADERS: usize = 256;
/// How long writing one answer may take before the connection is given up (a client that
/// does not read its answers holds nothing longer).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Conn::next_request`] may wait.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    /// For the first byte of the next request.
    pub idle: Duration,
    /// For the whole header block, from its first byte.
    pub header: Duration,
    /// A header block longer than this is refused.
    pub max_header_bytes: usize,
}

/// What [`Conn::next_request`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A request header was read: [`Conn::req_header`] is set.
    Request,
    /// The client closed the connection, or broke off a request.
    Closed,
    /// No request began within the idle wait.
    Idle,
    /// A request began but its header block did not arrive within its deadline.
    HeaderTimeout,
    /// The header block is longer than the limit.
    HeaderTooLarge,
    /// A request this reader does not serve: the connection goes to pingora's session.
    Handoff,
}

/// One HTTP/1.1 connection, read and written by the gateway itself.
pub struct Conn {
    stream: Stream,
    /// Bytes read and not yet taken: the rest of a body, or the next (pipelined) requests.
    buf: BytesMut,
    req: Option<RequestHeader>,
    /// Body bytes declared and not yet read.
    body_left: usize,
    /// The request asked for `100 Continue` before it sends its body, and has not had it.
    expect_continue: bool,
    /// When the first byte of the request being read came (its header deadline runs from it).
    head_started: Option<Instant>,
    keepalive: bool,
    /// Set by a failed read or write: the connection carries no further request.
    broken: bool,
    status: Option<u16>,
    bytes_in: usize,
    bytes_out: usize,
    client: Option<SocketAddr>,
    /// The answer being written (kept between requests to save an allocation).
    out: Vec<u8>,
}

/// An answer's header fields, handed to [`Conn::write_response`] one by one as (name, value):
/// names in lower case, values as they are to be sent.
pub trait Fields {
    fn each(&self, f: &mut dyn FnMut(&[u8], &[u8]));
}

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn::with_buffer(stream, &[])
    }

    /// A connection of which `read` was already read (by pingora's session, for a request it
    /// served: what followed that request).
    pub fn with_buffer(stream: Stream, read: &[u8]) -> Conn {
        let client = stream.get_socket_digest().and_then(|d| d.peer_addr().cloned());
        Conn {
            stream,
            buf: BytesMut::from(read),
            req: None,
            body_left: 0,
            expect_continue: false,
            head_started: None,
            keepalive: true,
            broken: false,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            client,
            out: Vec::new(),
        }
    }

    /// Reads the next request's header (its body is read on demand), within `waits`.
    /// Cancel-safe: what was read stays buffered, and the header deadline keeps its start.
    pub async fn next_request(&mut self, waits: Waits) -> Next {
        self.req = None;
        self.status = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        loop {
            if !self.buf.is_empty() {
                let started = *self.head_started.get_or_insert_with(Instant::now);
                match self.parse() {
                    Parsed::Complete => {
                        self.head_started = None;
                        return Next::Request;
                    }
                    Parsed::Handoff => {
                        self.head_started = None;
                        return Next::Handoff;
                    }
                    Parsed::TooManyHeaders => return Next::HeaderTooLarge,
                    Parsed::Partial if self.buf.len() > waits.max_header_bytes => {
                        return Next::HeaderTooLarge;
                    }
                    Parsed::Partial if self.buf.len() >= FAST_HEADER_BYTES => {
                        self.head_started = None;
                        return Next::Handoff;
                    }
                    Parsed::Partial => {}
                }
                let Some(left) = waits.header.checked_sub(started.elapsed()) else {
                    return Next::HeaderTimeout;
                };
                match self.fill(4096, left).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => return Next::HeaderTimeout,
                    Err(_) => return Next::Closed,
                }
            } else {
                match self.fill(4096, waits.idle).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        // Nothing began: the connection is as good as it was.
                        self.broken = false;
                        return Next::Idle;
                    }
                    Err(_) => return Next::Closed,
                }
            }
        }
    }

    /// When the header block being read (if any) has to be complete.
    pub fn header_started(&self) -> Option<Instant> {
        self.head_started
    }

    /// Reads more into `buf` (at least `want` bytes of room), within `wait`.
    async fn fill(&mut self, want: usize, wait: Duration) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want.max(4096));
        }
        let result = match fast_timeout(wait, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
        };
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn parse(&mut self) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let end = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => return self.many_headers(),
            Err(_) => return Parsed::Handoff,
        };
        let (Some(1), Some(method @ ("GET" | "POST")), Some(path)) = (req.version, req.method, req.path)
        else {
            return Parsed::Handoff;
        };
        if !path.starts_with('/') {
            return Parsed::Handoff;
        }
        let mut length = None;
        let mut keepalive = true;
        let mut hosts = 0;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                match (length, parse_length(h.value)) {
                    (None, Some(n)) => length = Some(n),
                    _ => return Parsed::Handoff,
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                if h.value.eq_ignore_ascii_case(b"close") {
                    keepalive = false;
                } else if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Handoff;
                }
            } else if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
                // pingora refuses userinfo in `Host` (400: `http::Uri::host` would strip it).
                if hosts > 1 || h.value.contains(&b'@') {
                    return Parsed::Handoff;
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                if !h.value.eq_ignore_ascii_case(b"100-continue") || expect_continue {
                    return Parsed::Handoff;
                }
                expect_continue = true;
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") || name.eq_ignore_ascii_case(b"upgrade")
            {
                return Parsed::Handoff;
            }
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = if method == "GET" {
            Method::GET
        } else {
            Method::POST
        };
        parts.headers.reserve(req.headers.len());
        // Names are made now; the target and values are cut from the header block once it
        // leaves `buf` (no copies).
        let base = self.buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let target = span(path.as_bytes());
        let mut fields = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let Some(name) = header_name(h.name.as_bytes()) else {
                return Parsed::Handoff;
            };
            fields.push((name, span(h.value)));
        }
        let head = self.buf.split_to(end).freeze();
        let Ok(uri) = http::Uri::from_maybe_shared(head.slice(target)) else {
            self.restore(head);
            return Parsed::Handoff;
        };
        parts.uri = uri;
        for (name, value) in fields {
            // httparse allows exactly the bytes a HeaderValue may hold, so this never fails.
            let Ok(value) = HeaderValue::from_maybe_shared(head.slice(value)) else {
                self.restore(head);
                return Parsed::Handoff;
            };
            parts.headers.append(name, value);
        }
        let header = RequestHeader::from(parts);
        self.req = Some(header);
        self.body_left = length.unwrap_or(0);
        self.expect_continue = expect_continue && self.body_left > 0;
        self.keepalive = keepalive;
        Parsed::Complete
    }

    /// More header fields than this reader takes: pingora's session takes up to
    /// [`PINGORA_MAX_HEADERS`]; more than that is refused here (431), as pingora would only
    /// call it malformed.
    fn many_headers(&self) -> Parsed {
        let mut headers = vec![httparse::EMPTY_HEADER; PINGORA_MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(&self.buf) {
            Err(httparse::Error::TooManyHeaders) => Parsed::TooManyHeaders,
            _ => Parsed::Handoff,
        }
    }

    /// Puts a header block taken from `buf` back in front of it.
    fn restore(&mut self, head: Bytes) {
        let mut all = BytesMut::with_capacity(head.len() + self.buf.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(&self.buf);
        self.buf = all;
    }

    /// The request read by the last [`Conn::next_request`] that returned [`Next::Request`].
    pub fn req_header(&self) -> &RequestHeader {
        self.req.as_ref().expect("a request was read")
    }

    /// The next piece of the request body; `None` once it has all been read. Each read must
    /// come by `deadline` (the whole body's). A request that asked for `100 Continue` gets it
    /// now, when its body is first wanted.
    pub async fn read_body(&mut self, deadline: Instant) -> io::Result<Option<Bytes>> {
        if self.body_left == 0 {
            return Ok(None);
        }
        if self.expect_continue {
            self.expect_continue = false;
            let sent = async {
                self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                self.stream.flush().await
            };
            if let Err(e) = fast_timeout(WRITE_TIMEOUT, sent)
                .await
                .unwrap_or(Err(io::ErrorKind::TimedOut.into()))
            {
                self.broken = true;
                return Err(e);
            }
        }
        if self.buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.fill(self.body_left.min(64 * 1024), left).await?;
        }
        let n = self.buf.len().min(self.body_left);
        self.body_left -= n;
        self.bytes_in += n;
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// The request asked for `100 Continue` and has not had it: it may not send its body
    /// unless told to, so a refusal must not wait for it (and the connection cannot carry
    /// another request, as the body may yet come).
    pub fn awaits_continue(&self) -> bool {
        self.expect_continue
    }

    pub fn is_body_done(&self) -> bool {
        self.body_left == 0
    }

    /// The answer ends the connection (`connection: close`).
    pub fn close_after(&mut self) {
        self.keepalive = false;
    }

    /// Whether another request may follow on this connection.
    pub fn reusable(&self) -> bool {
        self.keepalive && !self.broken && self.body_left == 0 && self.status.is_some()
    }

    /// Writes a bare error answer (no request was read: a header block too large or too
    /// slow) that ends the connection.
    pub async fn refuse(&mut self, status: u16, message: &str) {
        struct Json<'a>(&'a str, usize);
        impl Fields for Json<'_> {
            fn each(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
                f(b"content-type", b"application/json");
                f(b"content-length", itoa::Buffer::new().format(self.1).as_bytes());
                f(b"x-request-id", self.0.as_bytes());
            }
        }
        let body = inference::error::error_body(message);
        let id = inference::protocol::request_id::new_request_id();
        self.keepalive = false;
        let _ = self
            .write_response(status, &Json(&id, body.len()), body.as_bytes())
            .await;
    }

    /// Writes a whole answer: status line, `fields`, `date`, `connection`, body; one write.
    pub async fn write_response(
        &mut self,
        status: u16,
        fields: &(dyn Fields + Sync),
        body: &[u8],
    ) -> io::Result<()> {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // These carry no body (RFC 9110 6.4.1), nor, but for 304, a length.
        let bodyless =
            code.is_informational() || code == StatusCode::NO_CONTENT || code == StatusCode::NOT_MODIFIED;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        fields.each(&mut |name, value| {
            let dropped = bodyless && code != StatusCode::NOT_MODIFIED && name == b"content-length";
            if !dropped && valid_value(value) {
                line(out, name, value);
            }
        });
        line(
            out,
            b"date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        let connection: &[u8] = if self.keepalive { b"keep-alive" } else { b"close" };
        line(out, b"connection", connection);
        out.extend_from_slice(b"\r\n");
        if !bodyless {
            out.extend_from_slice(body);
        }
        self.status = Some(status);
        let sent = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let result = match fast_timeout(WRITE_TIMEOUT, sent).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        };
        match &result {
            Ok(()) if !bodyless => self.bytes_out += body.len(),
            Ok(()) => {}
            Err(_) => self.broken = true,
        }
        result
    }

    pub fn response_status(&self) -> Option<u16> {
        self.status
    }

    pub fn body_bytes_read(&self) -> usize {
        self.bytes_in
    }

    pub fn body_bytes_sent(&self) -> usize {
        self.bytes_out
    }

    pub fn client_addr(&self) -> Option<&SocketAddr> {
        self.client.as_ref()
    }

    /// Ends the connection as pingora does: TLS `close_notify`, then the socket's write side.
    pub async fn shutdown(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            pingora::protocols::Shutdown::shutdown(&mut *self.stream),
        )
        .await;
    }

    /// The connection and every byte read from it that was not taken: for pingora's session.
    pub fn into_handoff(self) -> (Stream, Bytes) {
        (self.stream, self.buf.freeze())
    }
}

enum Parsed {
    Complete,
    Partial,
    Handoff,
    TooManyHeaders,
}

/// A `Content-Length` of digits only (at most 19, so it fits), as RFC 9110 8.6 writes it.
fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The gateway's own names come from [`crate::http::names`] without being parsed again.
fn header_name(name: &[u8]) -> Option<HeaderName> {
    for known in [&X_API_KEY, &X_REQUEST_ID, &X_CANARY] {
        if name.eq_ignore_ascii_case(known.as_str().as_bytes()) {
            return Some(known.clone());
        }
    }
    HeaderName::from_bytes(name).ok()
}

/// What `HeaderValue::from_bytes` accepts: no control characters but tab.
fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[doc(hidden)]
pub mod agree;
#[cfg(test)]
mod tests;
