//! The addresses behind a remote pool's endpoints, and looking names up again while it runs.
//!
//! The system's resolver (getaddrinfo: `/etc/hosts`, then DNS as `/etc/resolv.conf` says),
//! as every other program on the host resolves; a Kubernetes headless Service's name has one
//! address per ready pod. Addresses are compared sorted, so a server that rotates its answers
//! changes nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::EndpointSpec;

/// A lookup that takes longer fails (and keeps the last addresses): the pool's upkeep waits
/// for it, and getaddrinfo's own retries can take 10 s and more.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What each entry of a pool's `endpoints` stood for at its last successful lookup.
pub struct Known {
    entries: Vec<Entry>,
    has_names: bool,
    last: Instant,
}

struct Entry {
    label: String,
    addresses: Vec<SocketAddr>,
    /// Why its last lookup failed, if it did (logged once when it starts and once when it ends).
    failure: Option<String>,
}

pub type Lookup = Vec<Result<Vec<SocketAddr>, String>>;

impl Known {
    /// Looks every name up now, blocking.
    pub fn now(pool: &str, specs: &[EndpointSpec]) -> Known {
        let mut known = Known {
            entries: specs
                .iter()
                .map(|s| Entry {
                    label: s.to_string(),
                    addresses: Vec::new(),
                    failure: None,
                })
                .collect(),
            has_names: specs.iter().any(EndpointSpec::is_name),
            last: Instant::now(),
        };
        let fresh = specs
            .iter()
            .map(|s| s.resolve_now().map_err(|e| e.to_string()))
            .collect();
        known.update(pool, fresh);
        known
    }

    /// Whether the names are due for another lookup (never when there are none).
    pub fn due(&self, every: Duration) -> bool {
        self.has_names && self.last.elapsed() >= every
    }

    /// Takes a lookup's results, one per entry; whether any entry's addresses changed. A
    /// failed lookup keeps the entry's addresses: a resolver that is briefly unreachable must
    /// not empty a pool whose servers are fine.
    pub fn update(&mut self, pool: &str, fresh: Lookup) -> bool {
        self.last = Instant::now();
        let mut changed = false;
        for (entry, result) in self.entries.iter_mut().zip(fresh) {
            match result {
                Ok(mut addresses) => {
                    addresses.sort();
                    addresses.dedup();
                    if entry.failure.take().is_some() {
                        tracing::info!(pool, endpoint = %entry.label, "resolves again");
                    }
                    if addresses.is_empty() && !entry.addresses.is_empty() {
                        tracing::warn!(pool, endpoint = %entry.label, "resolves to no address now");
                    }
                    if addresses != entry.addresses {
                        entry.addresses = addresses;
                        changed = true;
                    }
                }
                Err(e) => {
                    if entry.failure.is_none() {
                        tracing::warn!(
                            pool,
                            endpoint = %entry.label,
                            kept = ?entry.addresses,
                            "cannot resolve: {e} (looked up again while running; its last addresses are kept)"
                        );
                    }
                    entry.failure = Some(e);
                }
            }
        }
        changed
    }

    /// The entries (index, as written) whose last lookup failed or found no address, and why
    /// (`gateway check`).
    pub fn unresolved(&self) -> Vec<(usize, String, String)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match (&e.failure, e.addresses.is_empty()) {
                (Some(why), _) => Some((i, e.label.clone(), why.clone())),
                (None, true) => Some((i, e.label.clone(), "no address".to_string())),
                (None, false) => None,
            })
            .collect()
    }

    /// Every address, each once, in the order of the entries.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = Vec::new();
        for a in self.entries.iter().flat_map(|e| &e.addresses) {
            if !all.contains(a) {
                all.push(*a);
            }
        }
        all
    }
}

/// Looks every entry up (addresses stand for themselves), each within [`LOOKUP_TIMEOUT`].
pub async fn lookup(specs: &[EndpointSpec]) -> Lookup {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        out.push(match spec {
            EndpointSpec::Address(a) => Ok(vec![*a]),
            EndpointSpec::Name { host, port } => {
                match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                {
                    Ok(Ok(addresses)) => Ok(addresses.collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
                }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_change_is_a_change_of_the_set_and_a_failure_keeps_the_last_addresses() {
        let specs = vec![
            EndpointSpec::Address("10.0.0.1:80".parse().unwrap()),
            EndpointSpec::Name {
                host: "models.invalid".into(),
                port: 80,
            },
        ];
        let mut known = Known::now("p", &specs);
        // The name does not resolve (.invalid never does): only the address.
        assert_eq!(known.addresses(), addrs(&["10.0.0.1:80"]));
        assert!(known.has_names);
        let found = |list: &[&str]| vec![Ok(addrs(&["10.0.0.1:80"])), Ok(addrs(list))];
        assert!(known.update("p", found(&["10.0.0.3:80", "10.0.0.2:80"])));
        assert_eq!(
            known.addresses(),
            addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
        );
        // The same set in another order, twice over: no change.
        assert!(!known.update("p", found(&["10.0.0.2:80", "10.0.0.3:80", "10.0.0.2:80"])));
        // A failed lookup keeps what the name had.
        assert!(!known.update("p", vec![Ok(addrs(&["10.0.0.1:80"])), Err("timed out".into())]));
        assert_eq!(known.addresses().len(), 3);
        // An address that is also the fixed one counts once.
        assert!(known.update("p", found(&["10.0.0.1:80", "10.0.0.3:80"])));
        assert_eq!(known.addresses(), addrs(&["10.0.0.1:80", "10.0.0.3:80"]));
        assert!(known.update("p", found(&[])));
        assert_eq!(known.addresses(), addrs(&["10.0.0.1:80"]));
    }

    #[test]
    fn only_names_are_looked_up_again_and_only_when_due() {
        let fixed = Known::now("p", &[EndpointSpec::Address("10.0.0.1:80".parse().unwrap())]);
        assert!(!fixed.due(Duration::ZERO));
        let named = Known::now(
            "p",
            &[EndpointSpec::Name {
                host: "localhost".into(),
                port: 80,
            }],
        );
        assert!(!named.addresses().is_empty(), "localhost resolves");
        assert!(named.due(Duration::ZERO));
        assert!(!named.due(Duration::from_secs(3600)));
    }
}
