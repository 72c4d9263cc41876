//! HTTP/1 answers leave as one TLS record: a write buffer between pingora's HTTP/1 session
//! and the TLS stream.
//!
//! pingora writes a response's header and its body in two writes, and rustls seals every
//! write as a record of its own. Two records cost the gateway a second seal, and the client a
//! second open — and, for OpenSSL clients reading without read-ahead (wrk, curl), two more
//! `read` calls. Measured on the proxy benchmark, the client's core spent 3 to 4 µs more per
//! request than with nginx, which sends one record. Here writes collect until pingora
//! flushes (it does once a response is complete, or after a header it wants sent at once:
//! `100 Continue`, a header-only answer), up to one record's worth of plaintext.
//!
//! HTTP/2 needs none of this: the `h2` crate already writes its frames through one buffer.
//!
//! It also replays bytes already read from the connection (by the gateway's own HTTP/1
//! reader, [`crate::http::h1`], when it hands a request it does not serve to pingora's session).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest plaintext one TLS record carries.
const RECORD: usize = 16 * 1024;

/// A stream whose writes are held until a flush, up to [`RECORD`] bytes.
pub struct Coalesced {
    inner: Stream,
    buf: Vec<u8>,
    /// How much of `buf` the inner stream has taken.
    written: usize,
    /// Bytes read from `inner` before this stream was made, returned first.
    prefix: bytes::Bytes,
}

impl Coalesced {
    pub fn new(inner: Stream) -> Coalesced {
        Coalesced::with_prefix(inner, bytes::Bytes::new())
    }

    /// A stream whose reads return `prefix` before anything more from `inner`.
    pub fn with_prefix(inner: Stream, prefix: bytes::Bytes) -> Coalesced {
        Coalesced {
            inner,
            buf: Vec::new(),
            written: 0,
            prefix,
        }
    }

    /// The inner stream, and the bytes still to be replayed. Anything written is flushed
    /// already (pingora flushes every answer).
    pub fn into_parts(self) -> (Stream, bytes::Bytes) {
        debug_assert!(self.written == self.buf.len(), "unflushed writes");
        (self.inner, self.prefix)
    }

    /// Hands everything held to the inner stream (without flushing it).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > RECORD {
            ready!(this.poll_drain(cx))?;
            if data.len() >= RECORD {
                // Large writes go straight through: there is nothing to gain from copying them.
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        // What is held goes out before the connection closes (best effort, as pingora's is).
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut self.inner).await;
        self.inner.shutdown().await;
    }
}

impl UniqueID for Coalesced {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Coalesced {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Coalesced {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Coalesced {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Coalesced {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Coalesced {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.prefix.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        // Only a peek the held bytes answer whole is reported as done.
        let n = self.prefix.len().min(buf.len());
        buf[..n].copy_from_slice(&self.prefix[..n]);
        Ok(n == buf.len())
    }
}

impl fmt::Debug for Coalesced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesced")
            .field("inner", &self.inner)
            .field("held", &(self.buf.len() - self.written))
            .field("replaying", &self.prefix.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A stream and the peer that reads what it is sent.
    fn recording() -> (Stream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Box::new(a), b)
    }

    #[tokio::test]
    async fn writes_are_held_until_a_flush_then_leave_together() {
        use tokio::io::AsyncReadExt;
        let (inner, mut peer) = recording();
        let mut s = Coalesced::new(inner);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut probe = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), peer.read(&mut probe))
                .await
                .is_err(),
            "nothing leaves before the flush"
        );
        s.flush().await.unwrap();
        let mut got = vec![0u8; 40];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }

    #[tokio::test]
    async fn reads_return_the_prefix_first() {
        use tokio::io::AsyncReadExt;
        let (inner, mut peer) = recording();
        let mut s = Coalesced::with_prefix(inner, bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n"));
        peer.write_all(b"host: x\r\n\r\n").await.unwrap();
        drop(peer);
        let mut small = [0u8; 4];
        s.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"GET ");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"/ HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn large_writes_pass_and_order_is_kept() {
        use tokio::io::AsyncReadExt;
        let (inner, mut peer) = recording();
        let mut s = Coalesced::new(inner);
        let big = vec![7u8; RECORD + 10];
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        AsyncWriteExt::shutdown(&mut s).await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 4 + big.len() + 4);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + big.len()].iter().all(|&b| b == 7));
        assert_eq!(&got[4 + big.len()..], b"tail");
    }
}
