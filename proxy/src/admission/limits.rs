//! Limits on what a request may carry, and its id.

use pingora::http::RequestHeader;

use crate::errors::GatewayError;

/// Header bytes as sent: names, values, and ": " and CRLF per line. Checked on every request
/// so that h1 and h2 get the same limit (431 when over it).
pub fn check_headers(req: &RequestHeader, max: usize) -> Result<(), GatewayError> {
    let size: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    if size > max {
        return Err(GatewayError::HeadersTooLarge { limit: max });
    }
    Ok(())
}

/// The caller's `x-request-id` when it is usable (printable, at most 128 bytes), else a new
/// random one. Echoed on every response and passed to upstream servers.
pub fn request_id(req: &RequestHeader) -> String {
    inference::protocol::request_id::request_id(
        req.headers
            .get(crate::http::names::X_REQUEST_ID)
            .map(|v| v.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limit() {
        let mut req = RequestHeader::build("GET", b"/v2", None).unwrap();
        req.insert_header("x-big", "a".repeat(1000)).unwrap();
        assert!(check_headers(&req, 2000).is_ok());
        assert_eq!(check_headers(&req, 500).unwrap_err().status(), 431);
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut req = RequestHeader::build("GET", b"/v2", None).unwrap();
        let made = request_id(&req);
        assert_eq!(made.len(), 32);
        assert_ne!(made, request_id(&req));
        req.insert_header("x-request-id", "trace-1").unwrap();
        assert_eq!(request_id(&req), "trace-1");
        req.insert_header("x-request-id", "x".repeat(200)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }
}
