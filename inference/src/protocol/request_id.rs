//! The request id both servers put on every answer: the caller's `x-request-id` when it is
//! usable, otherwise a new one.

/// Whether a caller's `x-request-id` is kept (and echoed): 1 to 128 printable ASCII
/// characters, so that it cannot break a log line or smuggle control bytes; otherwise the
/// server makes its own. Both servers apply this rule.
pub fn usable_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A random 128-bit id, hex: unique enough to find one request in the logs.
pub fn new_request_id() -> String {
    // 32 lower-case hex digits, as `format!("{:032x}")` writes them, at a third of its cost
    // (every request without an id of its own makes one).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in rand::random::<u128>().to_be_bytes() {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 15)]));
    }
    id
}

/// The id of a request that sent `given` as its `x-request-id` (or nothing): the caller's
/// when it is usable, else a new one.
pub fn request_id(given: Option<&[u8]>) -> String {
    given
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| usable_request_id(v))
        .map_or_else(new_request_id, str::to_string)
}
