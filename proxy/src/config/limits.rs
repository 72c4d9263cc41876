//! `limits:`, the client-address settings of `listen:` and `auth.may_choose_variant`: what one
//! client may hold (sizes, time, connections, work) and what it may claim (its address, the
//! variant that answers). One function per section; `docs/limits.md` gives every limit's
//! reason, default and status code.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{ChooseVariantFile, LimitsFile};
use super::{Errors, Path, positive};
use crate::config::keys::KeyInfo;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// 413 above.
    pub max_body_bytes: usize,
    /// 431 above.
    pub max_header_bytes: usize,
    /// A connection's PROXY header and TLS handshake, from accept: closed after.
    pub handshake_timeout: Duration,
    /// A request's whole header block, from its first byte (HTTP/1.1): 408, then the
    /// connection closes.
    pub header_timeout: Duration,
    /// A request's whole body, from the end of its header: 408.
    pub body_timeout: Duration,
    /// Connections with no request in flight close after this (HTTP/1.1 keep-alive; HTTP/2,
    /// with a GOAWAY).
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed at accept, before TLS.
    pub max_connections: usize,
    /// Rows per request to a local pool (its own `max_rows` overrides): 413 above.
    pub max_rows: usize,
    /// The largest answer of a local pool, checked before it is encoded: 413 above.
    pub max_answer_bytes: usize,
    /// Request bodies and decoded tensors in flight, every request together: 503 with
    /// `Retry-After` above.
    pub max_inflight_bytes: usize,
    /// The part of it one API key may hold: one client's flood cannot take the rest.
    pub max_inflight_bytes_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        limits(
            &mut Errors::new(std::path::Path::new(""), ""),
            LimitsFile::default(),
        )
    }
}

pub fn limits(errors: &mut Errors, f: LimitsFile) -> Limits {
    let at = Path::root().key("limits");
    let LimitsFile {
        max_body_bytes,
        max_header_bytes,
        handshake_timeout_ms,
        header_timeout_ms,
        body_timeout_ms,
        idle_timeout_s,
        max_connections,
        max_rows,
        max_answer_bytes,
        max_inflight_bytes,
        max_inflight_bytes_per_key,
    } = f;
    let ms = |errors: &mut Errors, v: i64, max: i64, key: &str| {
        Duration::from_millis(positive(errors, v, 100, max, &at.key(key)) as u64)
    };
    let limits = Limits {
        max_body_bytes: positive(errors, max_body_bytes, 1, 1 << 30, &at.key("max_body_bytes")),
        max_header_bytes: positive(
            errors,
            max_header_bytes,
            256,
            1 << 20,
            &at.key("max_header_bytes"),
        ),
        handshake_timeout: ms(errors, handshake_timeout_ms, 60_000, "handshake_timeout_ms"),
        header_timeout: ms(errors, header_timeout_ms, 600_000, "header_timeout_ms"),
        body_timeout: ms(errors, body_timeout_ms, 3_600_000, "body_timeout_ms"),
        idle_timeout: Duration::from_secs(positive(
            errors,
            idle_timeout_s,
            1,
            86_400,
            &at.key("idle_timeout_s"),
        ) as u64),
        max_connections: positive(errors, max_connections, 1, 1_000_000, &at.key("max_connections")),
        max_rows: positive(errors, max_rows, 1, 10_000_000, &at.key("max_rows")),
        max_answer_bytes: positive(
            errors,
            max_answer_bytes,
            1024,
            1 << 31,
            &at.key("max_answer_bytes"),
        ),
        max_inflight_bytes: positive(
            errors,
            max_inflight_bytes,
            1 << 20,
            1 << 40,
            &at.key("max_inflight_bytes"),
        ),
        max_inflight_bytes_per_key: positive(
            errors,
            max_inflight_bytes_per_key,
            1 << 20,
            1 << 40,
            &at.key("max_inflight_bytes_per_key"),
        ),
    };
    if limits.max_inflight_bytes < limits.max_body_bytes {
        errors.add(
            &at.key("max_inflight_bytes"),
            format!(
                "must be at least max_body_bytes ({}), or no request of the largest size could ever be served",
                limits.max_body_bytes
            ),
        );
    }
    if limits.max_inflight_bytes_per_key < limits.max_body_bytes
        || limits.max_inflight_bytes_per_key > limits.max_inflight_bytes
    {
        errors.add(
            &at.key("max_inflight_bytes_per_key"),
            format!(
                "must be between max_body_bytes ({}) and max_inflight_bytes ({})",
                limits.max_body_bytes, limits.max_inflight_bytes
            ),
        );
    }
    limits
}

/// Who may state a client's address for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAddress {
    /// Peers whose connections start with a PROXY protocol header.
    pub proxy_protocol: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl ClientAddress {
    /// The client's address for per-address limits: `peer`, or, when `peer` is a trusted
    /// proxy, the last address in `X-Forwarded-For` that is not one (each proxy appends the
    /// address it saw, so the entries left of the first untrusted one are the client's own
    /// claims and are not believed).
    pub fn client_ip(&self, peer: IpAddr, forwarded: Option<&[u8]>) -> IpAddr {
        if !trusted(&self.trusted_proxies, peer) {
            return peer;
        }
        let Some(list) = forwarded.and_then(|v| std::str::from_utf8(v).ok()) else {
            return peer;
        };
        let mut client = peer;
        for entry in list.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&self.trusted_proxies, ip) {
                        break;
                    }
                }
                // An entry that is not an address: stop at the last good one.
                Err(_) => break,
            }
        }
        client
    }

    pub fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        trusted(&self.proxy_protocol, peer)
    }
}

fn trusted(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

/// `10.0.0.0/8`, `fd00::/8`, or one address (`10.1.2.3`).
pub fn networks(errors: &mut Errors, list: &[String], at: &Path) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net),
                Err(_) => {
                    errors.add(
                        &at.index(i),
                        format!("{text:?} is not a network such as 10.0.0.0/8 or an address"),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Who may choose the variant that answers (`x-canary`, versioned paths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChooseVariant {
    pub tenants: BTreeSet<String>,
    pub keys: BTreeSet<String>,
}

impl ChooseVariant {
    pub fn allows(&self, key: &KeyInfo) -> bool {
        self.tenants.contains(&key.tenant) || self.keys.contains(&key.id)
    }
}

pub fn choose_variant(errors: &mut Errors, f: ChooseVariantFile) -> ChooseVariant {
    let at = Path::root().key("auth").key("may_choose_variant");
    for (i, id) in f.keys.iter().enumerate() {
        if !crate::config::keys::looks_like_id(id) {
            errors.add(
                &at.key("keys").index(i),
                format!("{id:?} is not a key id (key_ and hex digits, as `gateway keys list` shows)"),
            );
        }
    }
    ChooseVariant {
        tenants: f.tenants.into_iter().collect(),
        keys: f.keys.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(trusted: &[&str]) -> ClientAddress {
        ClientAddress {
            proxy_protocol: Vec::new(),
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let a = addresses(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // From an untrusted peer, the header is the client's own claim.
        assert_eq!(
            a.client_ip(ip("203.0.113.9"), Some(b"1.2.3.4")),
            ip("203.0.113.9")
        );
        // From a trusted proxy: the last address that is not a proxy.
        assert_eq!(a.client_ip(ip("10.0.0.2"), Some(b"1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(
            a.client_ip(ip("10.0.0.2"), Some(b"6.6.6.6, 1.2.3.4, 10.0.0.7")),
            ip("1.2.3.4"),
            "entries left of the first untrusted one are the client's claims"
        );
        assert_eq!(
            a.client_ip(ip("10.0.0.2"), Some(b"junk, 10.0.0.9")),
            ip("10.0.0.9")
        );
        assert_eq!(a.client_ip(ip("10.0.0.2"), None), ip("10.0.0.2"));
        assert_eq!(
            a.client_ip(ip("::ffff:10.0.0.2"), Some(b"1.2.3.4")),
            ip("1.2.3.4")
        );
    }
}
