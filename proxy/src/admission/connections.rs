//! Client connections, from accept to close: how many are open (`limits.max_connections`:
//! beyond it a new one is closed at once, before its TLS handshake costs anything), the
//! PROXY protocol header of a load balancer (`listen.proxy_protocol`), and a deadline for the
//! TLS handshake (`limits.handshake_timeout_ms`; pingora's own is a fixed 60 s).
//!
//! It runs as pingora's pre-TLS callback, on the raw TCP stream of every accepted
//! connection. The connection's slot is a guard in the stream's `tracer` field, which the
//! stream notifies when it is dropped: the count is exact whatever way a connection ends
//! (handshake failure, client close, deadline, shutdown).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::upstreams::peer::{Tracer, Tracing};
use tokio::io::AsyncReadExt;

use crate::telemetry::metrics::Metrics;

/// A PROXY header is at most this long here (v1 is at most 107 bytes; v2 carries TLVs, of
/// which a load balancer sends a few).
const MAX_PROXY_HEADER: usize = 1024;

/// Where a connection is: counting on the slot, and telling the handshake deadline whether it
/// still applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Established,
    Closed,
}

struct Pending {
    fd: RawFd,
    since: Instant,
    phase: Arc<Mutex<Phase>>,
    /// Keeps the digest's allocation (not the digest) alive, so its address, the map's key,
    /// is never reused while the entry exists.
    _digest: Weak<SocketDigest>,
}

pub struct Connections {
    open: AtomicUsize,
    /// Connections in their TLS handshake, by the address of their socket digest.
    handshaking: Mutex<HashMap<usize, Pending>>,
    rules: Rules,
    metrics: Arc<Metrics>,
}

/// What the config in force says about a connection when it is accepted.
pub struct AcceptRules {
    /// `limits.max_connections`.
    pub max_connections: usize,
    /// `limits.handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// The peer is a load balancer of `listen.proxy_protocol`: its connections start with a
    /// PROXY header.
    pub proxy_header: bool,
}

/// Reads [`AcceptRules`] for a peer from the config snapshot in force (`routing`, a layer
/// above this one, which is why it comes as a function).
pub type Rules = Box<dyn Fn(Option<IpAddr>) -> AcceptRules + Send + Sync>;

impl Connections {
    pub fn new(rules: Rules, metrics: Arc<Metrics>) -> Arc<Connections> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            handshaking: Mutex::new(HashMap::new()),
            rules,
            metrics,
        })
    }

    /// Client connections open now (accepted, not yet closed).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The TLS handshake of the connection whose stream this is finished: its deadline is off.
    pub fn established(&self, digest: Option<&Arc<SocketDigest>>) {
        let Some(digest) = digest else { return };
        let pending = self.handshaking.lock().remove(&key(digest));
        if let Some(p) = pending {
            let mut phase = p.phase.lock();
            if *phase == Phase::Handshaking {
                *phase = Phase::Established;
            }
        }
    }

    /// Closes every connection whose TLS handshake has outlasted `deadline` (shutting the
    /// socket down makes the handshake fail at once). Called a few times a second.
    pub fn sweep(&self, deadline: Duration) {
        let late: Vec<(RawFd, Arc<Mutex<Phase>>)> = {
            let mut map = self.handshaking.lock();
            let late: Vec<usize> = map
                .iter()
                .filter(|(_, p)| p.since.elapsed() >= deadline)
                .map(|(k, _)| *k)
                .collect();
            late.into_iter()
                .filter_map(|k| map.remove(&k))
                .map(|p| (p.fd, p.phase))
                .collect()
        };
        for (fd, phase) in late {
            let phase = phase.lock();
            // Under the lock: a connection that closes marks itself Closed (in its stream's
            // drop, before the descriptor is closed) only once this is done with it.
            if *phase == Phase::Handshaking {
                // SAFETY: the descriptor belongs to a live connection (not Closed).
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                self.metrics
                    .connection_timeouts
                    .with_label_values(&["tls_handshake"])
                    .inc();
            }
        }
    }

    /// Reads a PROXY protocol header (v1 or v2) and makes its source the connection's peer
    /// address; bytes read past it are put back for TLS.
    async fn read_proxy_header(
        stream: &mut L4Stream,
        within: Duration,
    ) -> Result<Option<std::net::SocketAddr>, String> {
        let mut buf = Vec::with_capacity(256);
        let read = async {
            loop {
                let mut chunk = [0u8; 256];
                let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("the connection closed before its PROXY header".to_string());
                }
                buf.extend_from_slice(&chunk[..n]);
                let parsed = ppp::HeaderResult::parse(&buf);
                if ppp::PartialResult::is_incomplete(&parsed) {
                    if buf.len() >= MAX_PROXY_HEADER {
                        return Err("the PROXY header is too long".to_string());
                    }
                    continue;
                }
                return match parsed {
                    ppp::HeaderResult::V1(Ok(h)) => {
                        let source = match h.addresses {
                            ppp::v1::Addresses::Tcp4(a) => {
                                Some((IpAddr::V4(a.source_address), a.source_port))
                            }
                            ppp::v1::Addresses::Tcp6(a) => {
                                Some((IpAddr::V6(a.source_address), a.source_port))
                            }
                            ppp::v1::Addresses::Unknown => None,
                        };
                        Ok((h.header.len(), source))
                    }
                    ppp::HeaderResult::V2(Ok(h)) => {
                        let source = match h.addresses {
                            ppp::v2::Addresses::IPv4(a) => {
                                Some((IpAddr::V4(a.source_address), a.source_port))
                            }
                            ppp::v2::Addresses::IPv6(a) => {
                                Some((IpAddr::V6(a.source_address), a.source_port))
                            }
                            _ => None,
                        };
                        Ok((h.header.len(), source))
                    }
                    _ => Err("the connection did not start with a PROXY protocol header".to_string()),
                };
            }
        };
        let (used, source) = tokio::time::timeout(within, read)
            .await
            .map_err(|_| "no PROXY header within the handshake deadline".to_string())??;
        stream.rewind(&buf[used..]);
        Ok(source.map(|(ip, port)| std::net::SocketAddr::new(ip, port)))
    }
}

fn key(digest: &Arc<SocketDigest>) -> usize {
    Arc::as_ptr(digest) as usize
}

/// The connection's slot, held by its stream (`tracer`) until the stream is dropped.
#[derive(Debug)]
struct Slot {
    connections: Arc<Connections>,
    key: usize,
    phase: Arc<Mutex<Phase>>,
    /// Only the slot made at accept counts; a clone (pingora never clones a stream's tracer,
    /// but the trait asks for it) does not.
    owner: bool,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connections({} open)", self.open())
    }
}

impl Tracing for Slot {
    fn on_connected(&self) {}

    fn on_disconnected(&self) {
        if !self.owner {
            return;
        }
        // Before the descriptor closes: the sweeper must not shut down a reused one.
        *self.phase.lock() = Phase::Closed;
        self.connections.handshaking.lock().remove(&self.key);
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Slot {
            connections: self.connections.clone(),
            key: self.key,
            phase: self.phase.clone(),
            owner: false,
        })
    }
}

/// pingora's pre-TLS callback: one call per accepted client connection.
pub struct Admit(pub Arc<Connections>);

#[async_trait]
impl PreTlsProcess for Admit {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let c = &self.0;
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(PingoraAddr::as_inet).map(|a| a.ip()));
        let rules = (c.rules)(peer);
        let refuse = |reason: &'static str, why: String| -> pingora::Result<()> {
            c.metrics.connections_refused.with_label_values(&[reason]).inc();
            pingora::Error::e_explain(pingora::ErrorType::ConnectRefused, why)
        };
        if c.open.fetch_add(1, Ordering::Relaxed) >= rules.max_connections {
            c.open.fetch_sub(1, Ordering::Relaxed);
            return refuse(
                "max_connections",
                format!(
                    "{} client connections are open (limits.max_connections)",
                    rules.max_connections
                ),
            );
        }
        // From here the slot is the stream's: released when the stream is dropped.
        let phase = Arc::new(Mutex::new(Phase::Handshaking));
        stream.tracer = Some(Tracer(Box::new(Slot {
            connections: c.clone(),
            key: 0,
            phase: phase.clone(),
            owner: true,
        })));
        if let Some(peer) = peer
            && rules.proxy_header
        {
            match Connections::read_proxy_header(stream, rules.handshake_timeout).await {
                Ok(source) => {
                    let fd = stream.as_raw_fd();
                    let digest = SocketDigest::from_raw_fd(fd);
                    if let Some(source) = source {
                        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(source)));
                    }
                    stream.set_socket_digest(digest);
                }
                Err(why) => return refuse("proxy_protocol", format!("from {peer}: {why}")),
            }
        }
        // The handshake deadline: registered under the digest's address.
        if let Some(digest) = stream.get_socket_digest() {
            let k = key(&digest);
            if let Some(Tracer(slot)) = stream.tracer.as_mut() {
                // Re-made with its key (the tracer is ours: set above).
                *slot = Box::new(Slot {
                    connections: c.clone(),
                    key: k,
                    phase: phase.clone(),
                    owner: true,
                });
            }
            c.handshaking.lock().insert(
                k,
                Pending {
                    fd: stream.as_raw_fd(),
                    since: Instant::now(),
                    phase,
                    _digest: Arc::downgrade(&digest),
                },
            );
        }
        Ok(())
    }
}
