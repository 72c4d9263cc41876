//! One check per section of `routes.yaml` (`listen`, `tls`, `auth`, `rate_limits`, `server`,
//! `shadow`; `limits` is in `limits.rs`, `pools` and `routes` in `routes.rs`). Each takes its
//! part of the file, adds every problem it finds to the shared [`Errors`] and returns its part
//! of the [`Config`](super::Config) (with a stand-in value where a field was wrong, so that the
//! later sections still check: the caller refuses the file if anything was added).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use super::errors::{Errors, positive};
use super::file::{ListenFile, RateFile, RateLimitsFile, ServerFile, ShadowSettingsFile, TlsFile};
use super::keys::KeyStore;
use super::{
    ClientAddress, KeysInForce, LocalCopies, Path, Rate, RateLimits, RedisLimits, ShadowSettings, limits,
};

/// Where relative paths in the file are anchored: the config file's directory (as given, so
/// messages stay short).
pub struct Base(PathBuf);

impl Base {
    pub fn of(file: &FsPath) -> Base {
        Base(file.parent().map(FsPath::to_path_buf).unwrap_or_default())
    }

    pub fn relative(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { self.0.join(p) }
    }
}

/// `listen:`, checked.
pub struct Listeners {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub admin_hosts: Vec<String>,
    pub client_address: ClientAddress,
}

pub fn listen(errors: &mut Errors, listen: ListenFile) -> Listeners {
    let at = Path::root().key("listen");
    let mut socket = |value: &str, path: Path| -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            errors.add(&path, format!("{value:?} is not an address such as 0.0.0.0:8443"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    };
    let https = socket(&listen.https, at.key("https"));
    let admin = socket(&listen.admin, at.key("admin"));
    let client_address = ClientAddress {
        proxy_protocol: limits::networks(errors, &listen.proxy_protocol, &at.key("proxy_protocol")),
        trusted_proxies: limits::networks(errors, &listen.trusted_proxies, &at.key("trusted_proxies")),
    };
    for (i, host) in listen.admin_hosts.iter().enumerate() {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            errors.add(
                &at.key("admin_hosts").index(i),
                format!("{host:?} is not a host name"),
            );
        }
    }
    Listeners {
        https,
        admin,
        admin_hosts: listen.admin_hosts,
        client_address,
    }
}

/// `tls:`: the certificate and key files, both readable, or both absent and allowed to be
/// generated. Returns their paths.
pub fn tls(errors: &mut Errors, tls: &TlsFile, base: &Base) -> (PathBuf, PathBuf) {
    let at = Path::root().key("tls");
    let tls_cert = base.relative(&tls.cert);
    let tls_key = base.relative(&tls.key);
    match (tls_cert.exists(), tls_key.exists()) {
        (true, true) => {
            for (p, key) in [(&tls_cert, "cert"), (&tls_key, "key")] {
                if let Err(e) = std::fs::read(p) {
                    errors.add(&at.key(key), format!("cannot read {}: {e}", p.display()));
                }
            }
        }
        (false, false) if tls.generate_dev_cert => {}
        (false, false) => errors.add(
            &at,
            format!(
                "{} and {} do not exist (set generate_dev_cert: true to make development ones)",
                tls_cert.display(),
                tls_key.display()
            ),
        ),
        (true, false) => errors.add(&at.key("key"), format!("{} does not exist", tls_key.display())),
        (false, true) => errors.add(&at.key("cert"), format!("{} does not exist", tls_cert.display())),
    }
    (tls_cert, tls_key)
}

pub fn rate_limits(errors: &mut Errors, rate_limits: RateLimitsFile) -> RateLimits {
    let rl = Path::root().key("rate_limits");
    let default_rate = rate(errors, rate_limits.default, rl.key("default"));
    let per_ip = rate(errors, rate_limits.per_ip, rl.key("per_ip"));
    let auth_failures = rate(errors, rate_limits.auth_failures, rl.key("auth_failures"));
    let tiers: BTreeMap<String, Rate> = rate_limits
        .tiers
        .into_iter()
        .map(|(k, v)| {
            let r = rate(errors, v, rl.key("tiers").key(&k));
            (k, r)
        })
        .collect();
    let max_tracked_clients = positive(
        errors,
        rate_limits.max_tracked_clients,
        1,
        100_000_000,
        &rl.key("max_tracked_clients"),
    );
    let redis = rate_limits.redis.map(|r| {
        let at = rl.key("redis");
        if let Err(e) = redis::Client::open(r.url.as_str()) {
            errors.add(&at.key("url"), format!("not a Redis URL: {e}"));
        }
        if r.prefix.is_empty() {
            errors.add(&at.key("prefix"), "must not be empty".to_string());
        }
        let timeout_ms = positive(errors, r.timeout_ms, 1, 10_000, &at.key("timeout_ms"));
        RedisLimits {
            url: r.url,
            prefix: r.prefix,
            timeout: Duration::from_millis(timeout_ms as u64),
            on_unavailable: r.on_unavailable,
        }
    });
    RateLimits {
        default: default_rate,
        tiers,
        per_ip,
        max_tracked_clients,
        redis,
        auth_failures,
    }
}

fn rate(errors: &mut Errors, r: RateFile, path: Path) -> Rate {
    let mut field = |v: i64, name: &str| {
        NonZeroU32::new(u32::try_from(v).unwrap_or(0)).unwrap_or_else(|| {
            errors.add(
                &path.key(name),
                format!("must be between 1 and {}, got {v}", u32::MAX),
            );
            NonZeroU32::MIN
        })
    };
    Rate {
        per_second: field(r.per_second, "per_second"),
        burst: field(r.burst, "burst"),
    }
}

/// `server:`, checked.
pub struct Server {
    pub threads: usize,
    pub access_log: bool,
    pub shutdown_grace: Duration,
    pub watch: bool,
    pub upgrade_sock: PathBuf,
    pub log_format: String,
    /// As written; the default (beside the shadow store) needs the `shadow` section.
    pub rollout_state: Option<PathBuf>,
}

pub fn server(errors: &mut Errors, server: ServerFile, https: &SocketAddr, base: &Base) -> Server {
    let at = Path::root().key("server");
    let threads = match server.threads {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(t) => positive(errors, t, 1, 1024, &at.key("threads")),
    };
    let shutdown_grace = Duration::from_secs(positive(
        errors,
        server.shutdown_grace_s,
        0,
        3600,
        &at.key("shutdown_grace_s"),
    ) as u64);
    // One socket per listening address by default, so two gateways on one host do not meet.
    let upgrade_sock = server.upgrade_sock.as_deref().map_or_else(
        || std::env::temp_dir().join(format!("gateway-{}.upgrade.sock", https.port())),
        |p| base.relative(p),
    );
    if !matches!(server.log_format.as_str(), "text" | "json") {
        errors.add(
            &at.key("log_format"),
            format!("{:?} is not one of: text, json", server.log_format),
        );
    }
    Server {
        threads,
        access_log: server.access_log,
        shutdown_grace,
        watch: server.watch,
        upgrade_sock,
        log_format: server.log_format,
        rollout_state: server.rollout_state.as_deref().map(|p| base.relative(p)),
    }
}

pub fn shadow(errors: &mut Errors, shadow: ShadowSettingsFile, base: &Base) -> ShadowSettings {
    let sh = Path::root().key("shadow");
    if !(0.0..=1.0).contains(&shadow.sample_agreements) {
        errors.add(
            &sh.key("sample_agreements"),
            format!("must be between 0 and 1, got {}", shadow.sample_agreements),
        );
    }
    ShadowSettings {
        max_in_flight: positive(errors, shadow.max_in_flight, 1, 1 << 20, &sh.key("max_in_flight")),
        max_cpu_percent: positive(errors, shadow.max_cpu_percent, 1, 100, &sh.key("max_cpu_percent")) as u32,
        timeout: Duration::from_millis(
            positive(errors, shadow.timeout_ms, 1, 600_000, &sh.key("timeout_ms")) as u64,
        ),
        max_body_bytes: positive(
            errors,
            shadow.max_body_bytes,
            1,
            1 << 30,
            &sh.key("max_body_bytes"),
        ),
        store: base.relative(&shadow.store),
        keep_records: positive(errors, shadow.keep_records, 1, 1 << 40, &sh.key("keep_records")),
        keep_age: Duration::from_secs(
            3600 * positive(errors, shadow.keep_hours, 1, 24 * 3660, &sh.key("keep_hours")) as u64,
        ),
        sample_agreements: shadow.sample_agreements.clamp(0.0, 1.0),
        flush_interval: Duration::from_millis(positive(
            errors,
            shadow.flush_ms,
            10,
            60_000,
            &sh.key("flush_ms"),
        ) as u64),
        max_backlog_bytes: positive(
            errors,
            shadow.max_backlog_bytes,
            1 << 20,
            1 << 34,
            &sh.key("max_backlog_bytes"),
        ),
        local_copies: LocalCopies::parse(&shadow.local_copies).unwrap_or_else(|| {
            let names: Vec<_> = LocalCopies::ALL.iter().map(|c| c.name()).collect();
            errors.add(
                &sh.key("local_copies"),
                format!("{:?} is not one of: {}", shadow.local_copies, names.join(", ")),
            );
            LocalCopies::Auto
        }),
        max_queued: positive(errors, shadow.max_queued, 1, 1 << 16, &sh.key("max_queued")),
    }
}

/// `auth.keys_file`: readable and well-formed, or absent and allowed to be created; the keys'
/// tiers must be configured. A reload keeps the store in force while the file is the same
/// (the keys file reloads on its own).
pub fn keys(
    errors: &mut Errors,
    keys_file: &str,
    create_dev_key: bool,
    base: &Base,
    in_force: Option<KeysInForce<'_>>,
    rate_limits: &RateLimits,
) -> (PathBuf, Option<KeyStore>) {
    let at = Path::root().key("auth").key("keys_file");
    let keys_file = base.relative(keys_file);
    let keys = match in_force.filter(|k| k.file == keys_file) {
        Some(k) => Some(k.store.clone()),
        None if keys_file.exists() => KeyStore::load(&keys_file).map_err(|e| errors.list.extend(e)).ok(),
        None => {
            if !create_dev_key {
                errors.add(
                    &at,
                    format!(
                        "{} does not exist (create keys with `gateway keys add --tenant NAME`, or set create_dev_key: true)",
                        keys_file.display()
                    ),
                );
            }
            None
        }
    };
    if let Some(store) = &keys {
        for problem in store.unknown_tiers(rate_limits) {
            errors.add(&at, problem);
        }
    }
    (keys_file, keys)
}
