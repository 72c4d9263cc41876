//! The HTTP/1.1 exchange with an upstream, by hand: the request written in one buffer, the
//! answer read with `httparse` (why not pingora's client or hyper's: the module docs of
//! `pools::remote`, measured with callgrind).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use super::Outbound;

/// Largest answer header accepted from an upstream.
const MAX_ANSWER_HEADER: usize = 64 * 1024;
/// Most header fields an answer may have.
const MAX_ANSWER_FIELDS: usize = 64;

/// An upstream's answer, read whole.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) content_type: Option<String>,
    pub(super) header_length: Option<String>,
    pub(super) body: Bytes,
    /// Whether the connection can carry another request.
    pub(super) keep_alive: bool,
}

/// How an answer's body is delimited (RFC 9112, section 6.3).
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// Reads one HTTP/1 answer: its header (interim `1xx` answers skipped) and its whole body,
/// framed by `content-length`, chunked, or by the end of the connection.
pub(super) async fn read_answer(stream: &mut Stream, max_body: usize) -> Result<Answer, String> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the upstream closed the connection before answering".into());
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
        let mut head = httparse::Response::new(&mut fields);
        let parsed = head
            .parse(&buf)
            .map_err(|e| format!("invalid answer header from the upstream: {e}"))?;
        let httparse::Status::Complete(header_len) = parsed else {
            if buf.len() > MAX_ANSWER_HEADER {
                return Err("the upstream's answer header is too large".into());
            }
            continue;
        };
        let status = head.code.unwrap_or(0);
        if (100..200).contains(&status) {
            // `100 Continue` and other interim answers: the final one follows.
            buf.advance(header_len);
            if !buf.is_empty() {
                let mut rest = buf.split();
                std::mem::swap(&mut buf, &mut rest);
            }
            continue;
        }
        let mut content_type = None;
        let mut header_length = None;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = head.version == Some(0);
        for field in head.headers.iter() {
            let value = || {
                std::str::from_utf8(field.value)
                    .map(|v| v.trim().to_string())
                    .ok()
            };
            let name = field.name;
            // Lengths compared first: most fields are none of these.
            let is = |wanted: &str| name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted);
            if is("content-length") {
                let n = std::str::from_utf8(field.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("the upstream sent an invalid content-length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("the upstream sent conflicting content-lengths".into());
                }
                length = Some(n);
            } else if is("transfer-encoding") {
                chunked = field
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked {
                    return Err("the upstream sent a transfer-encoding other than chunked".into());
                }
            } else if is("connection") {
                let v = field.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if v.eq_ignore_ascii_case(b"keep-alive") && head.version == Some(0) {
                    close = false;
                }
            } else if is("content-type") {
                content_type = value();
            } else if is(inference::protocol::HEADER_LENGTH) {
                header_length = value();
            }
        }
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            // Both framings at once: chunked wins, and the connection is not trusted again.
            close |= length.is_some();
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::Close
        };
        buf.advance(header_len);
        let body = read_body(stream, buf, framing, max_body).await?;
        return Ok(Answer {
            status,
            content_type,
            header_length,
            body,
            keep_alive: !close,
        });
    }
}

/// Reads more of an answer that is not complete yet: the connection's end is an error.
async fn more(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), String> {
    match stream.read_buf(buf).await {
        Ok(0) => Err("the upstream closed the connection mid-answer".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The body after the header; `buf` holds what was read past the header already.
async fn read_body(
    stream: &mut Stream,
    mut buf: BytesMut,
    framing: Framing,
    max: usize,
) -> Result<Bytes, String> {
    let too_large = || "the upstream's answer is over the size limit".to_string();
    match framing {
        Framing::Length(n) => {
            if n > max {
                return Err(too_large());
            }
            buf.reserve(n.saturating_sub(buf.len()));
            while buf.len() < n {
                more(stream, &mut buf).await?;
            }
            if buf.len() > n {
                return Err("the upstream sent more than its content-length".into());
            }
            Ok(buf.freeze())
        }
        Framing::Close => loop {
            if buf.len() > max {
                return Err(too_large());
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Ok(buf.freeze()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        },
        Framing::Chunked => {
            let mut body = BytesMut::new();
            loop {
                let (skip, size) = loop {
                    match httparse::parse_chunk_size(&buf) {
                        Ok(httparse::Status::Complete((skip, size))) => break (skip, size),
                        Ok(httparse::Status::Partial) if buf.len() < 1024 => {
                            more(stream, &mut buf).await?;
                        }
                        _ => return Err("the upstream sent an invalid chunk".into()),
                    }
                };
                buf.advance(skip);
                let size = usize::try_from(size).map_err(|_| too_large())?;
                if size == 0 {
                    // Trailer fields, if any, up to the empty line: read and dropped.
                    loop {
                        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                            let line_empty = end == 0;
                            buf.advance(end + 2);
                            if line_empty {
                                break;
                            }
                        } else if buf.len() > MAX_ANSWER_HEADER {
                            return Err("the upstream's trailer is too large".into());
                        } else {
                            more(stream, &mut buf).await?;
                        }
                    }
                    if !buf.is_empty() {
                        return Err("the upstream sent more than its chunked body".into());
                    }
                    return Ok(body.freeze());
                }
                if body.len() + size > max {
                    return Err(too_large());
                }
                while buf.len() < size + 2 {
                    more(stream, &mut buf).await?;
                }
                body.extend_from_slice(&buf[..size]);
                if &buf[size..size + 2] != b"\r\n" {
                    return Err("the upstream sent an invalid chunk".into());
                }
                buf.advance(size + 2);
            }
        }
    }
}

/// The request line, headers and body, to be written at once.
pub(super) fn request_wire(out: &Outbound<'_>, host: &str) -> Result<BytesMut, &'static str> {
    // Values that come from the client were parsed as header values already (no CR or LF);
    // the check keeps a request from ever being split, whatever the caller passes.
    let fields = [
        out.path,
        out.request_id,
        out.content_type.unwrap_or(""),
        out.header_length.unwrap_or(""),
    ];
    if fields
        .iter()
        .any(|f| memchr::memchr2(b'\r', b'\n', f.as_bytes()).is_some())
    {
        return Err("a header value holds a line break");
    }
    let mut wire = BytesMut::with_capacity(256 + out.path.len() + out.request_id.len() + out.body.len());
    let put = |wire: &mut BytesMut, parts: &[&[u8]]| parts.iter().for_each(|p| wire.put_slice(p));
    put(
        &mut wire,
        &[out.method.as_bytes(), b" ", out.path.as_bytes(), b" HTTP/1.1\r\n"],
    );
    let length = out.body.len().to_string();
    let mut headers = vec![
        ("host", host),
        ("content-length", length.as_str()),
        ("x-request-id", out.request_id),
    ];
    headers.extend(out.content_type.map(|v| ("content-type", v)));
    headers.extend(out.header_length.map(|v| (inference::protocol::HEADER_LENGTH, v)));
    for (name, value) in headers {
        put(&mut wire, &[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
    }
    put(&mut wire, &[b"\r\n", &out.body]);
    Ok(wire)
}
