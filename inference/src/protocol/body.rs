//! A request body, read under the protocol's limits whatever the transport (hyper's body in
//! `inference-server`; the gateway's own HTTP/1.1 reader or pingora's session): refused with
//! 413 by its declared length before any of it is read, or as soon as the bytes read pass the
//! limit; 408 past its deadline; 400 when the transport fails. A body that came in one piece
//! is kept as it came, not copied.

use std::fmt::Display;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::InferError;

pub struct BodyReader {
    limit: usize,
    /// The first chunk, kept whole while it is the only one.
    first: Option<Bytes>,
    /// Every chunk, once there is more than one.
    joined: BytesMut,
    len: usize,
}

impl BodyReader {
    /// A reader for a body of at most `limit` bytes that declared `declared` (its
    /// `Content-Length`, when it sent one).
    pub fn new(limit: usize, declared: Option<u64>) -> Result<BodyReader, InferError> {
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(InferError::PayloadTooLarge { limit });
        }
        Ok(BodyReader {
            limit,
            first: None,
            joined: BytesMut::new(),
            len: 0,
        })
    }

    /// Adds what the transport read next.
    pub fn push(&mut self, chunk: Bytes) -> Result<(), InferError> {
        if self.len + chunk.len() > self.limit {
            return Err(InferError::PayloadTooLarge { limit: self.limit });
        }
        self.len += chunk.len();
        if self.len == chunk.len() && self.first.is_none() {
            self.first = Some(chunk);
            return Ok(());
        }
        if let Some(first) = self.first.take() {
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(&chunk);
        Ok(())
    }

    /// Bytes read so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole body.
    pub fn finish(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => self.joined.freeze(),
        }
    }

    /// The error for a body that did not arrive within `deadline` (408).
    pub fn timed_out(deadline: Duration) -> InferError {
        InferError::BodyTimeout {
            limit_ms: deadline.as_millis() as u64,
        }
    }

    /// The error for a body the transport could not read (400).
    pub fn failed(e: impl Display) -> InferError {
        InferError::bad_request(format!("could not read the request body: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading() {
        assert!(matches!(
            BodyReader::new(10, Some(11)),
            Err(InferError::PayloadTooLarge { limit: 10 })
        ));
        assert!(BodyReader::new(10, Some(10)).is_ok());
    }

    #[test]
    fn bytes_past_the_limit_are_refused_as_they_come() {
        let mut b = BodyReader::new(5, None).unwrap();
        b.push(Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(
            b.push(Bytes::from_static(b"def")),
            Err(InferError::PayloadTooLarge { limit: 5 })
        ));
    }

    #[test]
    fn one_chunk_is_kept_as_it_came_and_several_are_joined() {
        let whole = Bytes::from_static(b"whole body");
        let mut b = BodyReader::new(100, None).unwrap();
        b.push(whole.clone()).unwrap();
        assert_eq!(b.finish().as_ptr(), whole.as_ptr());
        let mut b = BodyReader::new(100, None).unwrap();
        for part in [&b"ab"[..], b"", b"cd", b"e"] {
            b.push(Bytes::copy_from_slice(part)).unwrap();
        }
        assert_eq!(b.len(), 5);
        assert_eq!(&b.finish()[..], b"abcde");
    }
}
