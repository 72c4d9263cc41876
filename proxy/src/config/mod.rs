//! `routes.yaml` in two layers: [`file`] is what operators write (serde, closed structs);
//! [`Config`] is what the gateway runs on, produced by [`parse`], which checks everything it
//! can without loading models and reports *every* problem at once, each with its line and
//! column. A file that fails is never used: the caller keeps what it had.

pub mod file;
pub mod limits;
pub mod locate;
mod summary;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use inference::PoolConfig;

use crate::keys::KeyStore;
use file::{FileConfig, RateFile, StickyFile};
pub use file::{OnFailure, OnUnavailable};
pub use limits::{ChooseVariant, ClientAddress, Limits};
pub use locate::Path;

/// A problem in a config file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path to the value (`routes[0].canary.weight`); empty for file-level errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Collects errors against one source file, locating each.
pub struct Errors<'a> {
    file: &'a FsPath,
    source: &'a str,
    pub list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(file: &'a FsPath, source: &'a str) -> Self {
        Errors {
            file,
            source,
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, path: &Path, message: impl Into<String>) {
        let (line, column) =
            locate::locate(self.source, path).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// A serde_yaml error (syntax, wrong type, unknown field) as a located [`ConfigError`].
pub fn yaml_error(file: &FsPath, e: &serde_yaml::Error) -> ConfigError {
    let location = e.location();
    // serde_yaml prefixes its message with the path and suffixes the position; keep the text.
    let message = e.to_string();
    let message = match message.rsplit_once(" at line ") {
        Some((head, _)) => head.to_string(),
        None => message,
    };
    ConfigError {
        file: file.to_path_buf(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        path: String::new(),
        message,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub default: Rate,
    pub tiers: BTreeMap<String, Rate>,
    pub per_ip: Rate,
    pub max_tracked_clients: usize,
    /// Per-key limits shared through Redis (per-IP limits stay per replica).
    pub redis: Option<RedisLimits>,
    /// Failed authentications per client address.
    pub auth_failures: Rate,
}

#[derive(Clone, PartialEq, Eq)]
pub struct RedisLimits {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
}

// By hand, so that a reload's diff (which prints settings) never shows a password.
impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("url", &self.url_redacted())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

impl RedisLimits {
    /// The URL with any password replaced, for logs and `/admin/config`.
    pub fn url_redacted(&self) -> String {
        redact_url(&self.url)
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    match path {
        Some(p) => format!("{scheme}://{authority}/{p}"),
        None => format!("{scheme}://{authority}"),
    }
}

impl RateLimits {
    /// The quota for a key's tier (`default` when the tier has no entry of its own).
    pub fn for_tier(&self, tier: &str) -> Rate {
        self.tiers.get(tier).copied().unwrap_or(self.default)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSpec {
    pub model: String,
    pub version: u64,
    pub path: PathBuf,
    pub pool: PoolConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSpec {
    pub endpoints: Vec<SocketAddr>,
    pub model: String,
    pub version: u64,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub health_interval: Duration,
    pub health_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSpec {
    Local(LocalSpec),
    Http(HttpSpec),
}

impl PoolSpec {
    pub fn model(&self) -> &str {
        match self {
            PoolSpec::Local(l) => &l.model,
            PoolSpec::Http(h) => &h.model,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            PoolSpec::Local(l) => l.version,
            PoolSpec::Http(h) => h.version,
        }
    }
}

/// How a client keeps its variant while the canary weight changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// Every request is split independently.
    None,
    /// By API key: a client keeps its variant.
    ApiKey,
    /// By the value of this (lower-case) header; requests without it are split independently.
    Header(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub pool: String,
    /// Percent of traffic, 0–100: what is served (a rollout may set it).
    pub weight: u8,
    /// The weight written in the file (an edit of it takes precedence over a rollout).
    pub configured_weight: u8,
    /// A progressive rollout run by the gateway (`crate::rollout`).
    pub rollout: Option<Rollout>,
}

/// A validated rollout policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// Weights, ascending, each 1–100.
    pub steps: Vec<u8>,
    pub interval: Duration,
    pub min_requests: u64,
    pub max_error_rate_delta: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub min_shadow_agreement: Option<f64>,
    pub min_comparisons: u64,
    pub on_failure: OnFailure,
}

// Gates are finite numbers (validated), so equality is total.
impl Eq for Rollout {}

impl Rollout {
    /// Identifies a policy: a rollout whose policy changes starts again from its first step.
    pub fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    pub pool: String,
    pub percent: u8,
}

/// How shadow copies are made, compared and kept (`shadow:` in the file).
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowSettings {
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub store: PathBuf,
    pub keep_records: usize,
    pub keep_age: Duration,
    pub sample_agreements: f64,
    pub flush_interval: Duration,
    /// Bytes of records waiting for the store's writer, at most.
    pub max_backlog_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Position in the file's `routes` list, for error messages.
    pub index: usize,
    pub model: String,
    pub stable: String,
    pub canary: Option<Canary>,
    pub sticky: Sticky,
    pub salt: String,
    pub shadows: Vec<Shadow>,
}

/// A validated config: every reference resolves, every number is in range, every file that
/// must exist does (or will be generated, where the file allows it).
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub source: String,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// Host names the admin listener answers to besides its address.
    pub admin_hosts: Vec<String>,
    /// PROXY protocol and `X-Forwarded-For`: from whom a client address is believed.
    pub client_address: ClientAddress,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub generate_dev_cert: bool,
    pub keys_file: PathBuf,
    pub create_dev_key: bool,
    /// The keys file's contents, or `None` when it is yet to be created.
    pub keys: Option<KeyStore>,
    /// Who may choose a variant (`x-canary`, versioned paths).
    pub may_choose_variant: ChooseVariant,
    pub rate_limits: RateLimits,
    pub limits: Limits,
    pub threads: usize,
    pub access_log: bool,
    /// Longest wait for requests in flight after SIGTERM.
    pub shutdown_grace: Duration,
    pub watch: bool,
    /// The socket for handing listeners to a new process (`gateway run --upgrade`).
    pub upgrade_sock: PathBuf,
    /// The rollout engine's state file (`crate::rollout`).
    pub rollout_state: PathBuf,
    /// `text` or `json` (read at start; see `main.rs`).
    pub log_format: String,
    pub shadow: ShadowSettings,
    pub pools: BTreeMap<String, PoolSpec>,
    pub routes: BTreeMap<String, Route>,
}

/// A file's text, or the error that names it.
pub fn read_source(file: &FsPath) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(file).map_err(|e| {
        vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })
}

/// Reads and validates a config file.
pub fn load(file: &FsPath) -> Result<Config, Vec<ConfigError>> {
    let source = read_source(file)?;
    parse(file, &source)
}

/// Validates config text; `file` names it in errors and anchors relative paths. The keys file
/// is read and checked too.
pub fn parse(file: &FsPath, source: &str) -> Result<Config, Vec<ConfigError>> {
    parse_with_keys(file, source, None)
}

/// The keys a reload keeps: the store in force, read from `file`. A reload of `routes.yaml`
/// does not read the keys file again (the keys reload on their own), unless it names another.
pub struct KeysInForce<'a> {
    pub file: &'a FsPath,
    pub store: &'a KeyStore,
}

/// [`parse`], taking the keys from `in_force` when the config still names its file.
pub fn parse_with_keys(
    file: &FsPath,
    source: &str,
    in_force: Option<KeysInForce<'_>>,
) -> Result<Config, Vec<ConfigError>> {
    let parsed: FileConfig = serde_yaml::from_str(source).map_err(|e| vec![yaml_error(file, &e)])?;
    // Relative paths are relative to the config file (as given, so messages stay short).
    let base = file.parent().map(FsPath::to_path_buf).unwrap_or_default();
    let mut errors = Errors::new(file, source);
    let root = Path::root();
    let relative = |p: &str| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };

    let FileConfig {
        listen,
        tls,
        auth,
        rate_limits,
        limits,
        server,
        shadow,
        models_dir,
        pools,
        routes,
    } = parsed;

    let mut socket = |value: &str, path: Path| -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            errors.add(&path, format!("{value:?} is not an address such as 0.0.0.0:8443"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    };
    let https = socket(&listen.https, root.key("listen").key("https"));
    let admin = socket(&listen.admin, root.key("listen").key("admin"));
    let client_address = ClientAddress {
        proxy_protocol: limits::networks(
            &mut errors,
            &listen.proxy_protocol,
            &root.key("listen").key("proxy_protocol"),
        ),
        trusted_proxies: limits::networks(
            &mut errors,
            &listen.trusted_proxies,
            &root.key("listen").key("trusted_proxies"),
        ),
    };
    for (i, host) in listen.admin_hosts.iter().enumerate() {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            errors.add(
                &root.key("listen").key("admin_hosts").index(i),
                format!("{host:?} is not a host name"),
            );
        }
    }
    let may_choose_variant = limits::choose_variant(&mut errors, auth.may_choose_variant);

    // TLS files: both readable, or both absent and allowed to be generated.
    let tls_cert = relative(&tls.cert);
    let tls_key = relative(&tls.key);
    match (tls_cert.exists(), tls_key.exists()) {
        (true, true) => {
            for (p, key) in [(&tls_cert, "cert"), (&tls_key, "key")] {
                if let Err(e) = std::fs::read(p) {
                    errors.add(
                        &root.key("tls").key(key),
                        format!("cannot read {}: {e}", p.display()),
                    );
                }
            }
        }
        (false, false) if tls.generate_dev_cert => {}
        (false, false) => errors.add(
            &root.key("tls"),
            format!(
                "{} and {} do not exist (set generate_dev_cert: true to make development ones)",
                tls_cert.display(),
                tls_key.display()
            ),
        ),
        (true, false) => errors.add(
            &root.key("tls").key("key"),
            format!("{} does not exist", tls_key.display()),
        ),
        (false, true) => errors.add(
            &root.key("tls").key("cert"),
            format!("{} does not exist", tls_cert.display()),
        ),
    }

    let mut rate = |r: RateFile, path: Path| -> Rate {
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
    };
    let rl = root.key("rate_limits");
    let default_rate = rate(rate_limits.default, rl.key("default"));
    let per_ip = rate(rate_limits.per_ip, rl.key("per_ip"));
    let auth_failures = rate(rate_limits.auth_failures, rl.key("auth_failures"));
    let tiers: BTreeMap<String, Rate> = rate_limits
        .tiers
        .into_iter()
        .map(|(k, v)| {
            let r = rate(v, rl.key("tiers").key(&k));
            (k, r)
        })
        .collect();
    let max_tracked_clients = positive(
        &mut errors,
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
        let timeout_ms = positive(&mut errors, r.timeout_ms, 1, 10_000, &at.key("timeout_ms"));
        RedisLimits {
            url: r.url,
            prefix: r.prefix,
            timeout: Duration::from_millis(timeout_ms as u64),
            on_unavailable: r.on_unavailable,
        }
    });
    let rate_limits = RateLimits {
        default: default_rate,
        tiers,
        per_ip,
        max_tracked_clients,
        redis,
        auth_failures,
    };

    let limits = limits::limits(&mut errors, limits);
    let threads = match server.threads {
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(t) => positive(&mut errors, t, 1, 1024, &root.key("server").key("threads")),
    };

    let shutdown_grace = Duration::from_secs(positive(
        &mut errors,
        server.shutdown_grace_s,
        0,
        3600,
        &root.key("server").key("shutdown_grace_s"),
    ) as u64);
    // One socket per listening address by default, so two gateways on one host do not meet.
    let upgrade_sock = server.upgrade_sock.as_deref().map_or_else(
        || std::env::temp_dir().join(format!("gateway-{}.upgrade.sock", https.port())),
        relative,
    );

    if !matches!(server.log_format.as_str(), "text" | "json") {
        errors.add(
            &root.key("server").key("log_format"),
            format!("{:?} is not one of: text, json", server.log_format),
        );
    }

    let sh = root.key("shadow");
    if !(0.0..=1.0).contains(&shadow.sample_agreements) {
        errors.add(
            &sh.key("sample_agreements"),
            format!("must be between 0 and 1, got {}", shadow.sample_agreements),
        );
    }
    let shadow = ShadowSettings {
        max_in_flight: positive(
            &mut errors,
            shadow.max_in_flight,
            1,
            1 << 20,
            &sh.key("max_in_flight"),
        ),
        timeout: Duration::from_millis(positive(
            &mut errors,
            shadow.timeout_ms,
            1,
            600_000,
            &sh.key("timeout_ms"),
        ) as u64),
        max_body_bytes: positive(
            &mut errors,
            shadow.max_body_bytes,
            1,
            1 << 30,
            &sh.key("max_body_bytes"),
        ),
        store: relative(&shadow.store),
        keep_records: positive(
            &mut errors,
            shadow.keep_records,
            1,
            1 << 40,
            &sh.key("keep_records"),
        ),
        keep_age: Duration::from_secs(
            3600 * positive(
                &mut errors,
                shadow.keep_hours,
                1,
                24 * 3660,
                &sh.key("keep_hours"),
            ) as u64,
        ),
        sample_agreements: shadow.sample_agreements.clamp(0.0, 1.0),
        flush_interval: Duration::from_millis(positive(
            &mut errors,
            shadow.flush_ms,
            10,
            60_000,
            &sh.key("flush_ms"),
        ) as u64),
        max_backlog_bytes: positive(
            &mut errors,
            shadow.max_backlog_bytes,
            1 << 20,
            1 << 34,
            &sh.key("max_backlog_bytes"),
        ),
    };

    // Keys: readable and well-formed, or absent and allowed to be created.
    let keys_file = relative(&auth.keys_file);
    let keys = match in_force.filter(|k| k.file == keys_file) {
        Some(k) => Some(k.store.clone()),
        None if keys_file.exists() => KeyStore::load(&keys_file).map_err(|e| errors.list.extend(e)).ok(),
        None => {
            if !auth.create_dev_key {
                errors.add(
                    &root.key("auth").key("keys_file"),
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
        for problem in store.unknown_tiers(&rate_limits) {
            errors.add(&root.key("auth").key("keys_file"), problem);
        }
    }

    let models_dir = relative(&models_dir);
    let mut pool_specs = BTreeMap::new();
    for (name, pool) in pools {
        let path = root.key("pools").key(&name);
        if !valid_name(&name) {
            errors.add(&path, "pool names may use letters, digits, '-', '_' and '.'");
        }
        let spec = match (pool.local, pool.http) {
            (Some(_), Some(_)) | (None, None) => {
                errors.add(&path, "must have exactly one of `local` or `http`");
                continue;
            }
            (Some(l), None) => {
                let p = path.key("local");
                let version = positive(&mut errors, l.version, 1, u32::MAX as i64, &p.key("version")) as u64;
                let file = models_dir
                    .join(&l.model)
                    .join(version.to_string())
                    .join("model.onnx");
                if !file.is_file() {
                    errors.add(
                        &p.key("model"),
                        format!(
                            "no model file {} (models_dir is {})",
                            file.display(),
                            models_dir.display()
                        ),
                    );
                }
                PoolSpec::Local(LocalSpec {
                    model: l.model,
                    version,
                    path: file,
                    pool: PoolConfig {
                        instances: positive(&mut errors, l.instances, 1, 256, &p.key("instances")),
                        max_batch: positive(&mut errors, l.max_batch, 1, 65_536, &p.key("max_batch")),
                        max_delay: Duration::from_micros(positive(
                            &mut errors,
                            l.max_delay_us,
                            0,
                            1_000_000,
                            &p.key("max_delay_us"),
                        ) as u64),
                        queue_capacity: positive(
                            &mut errors,
                            l.queue_capacity,
                            1,
                            1 << 20,
                            &p.key("queue_capacity"),
                        ),
                        intra_threads: 1,
                        reject_non_finite: true,
                        idle_priority: false,
                        max_rows: l.max_rows.map_or(limits.max_rows, |n| {
                            positive(&mut errors, n, 1, 10_000_000, &p.key("max_rows"))
                        }),
                    },
                })
            }
            (None, Some(h)) => {
                let p = path.key("http");
                if h.endpoints.is_empty() {
                    errors.add(&p.key("endpoints"), "needs at least one host:port");
                }
                let mut endpoints = Vec::new();
                for (i, e) in h.endpoints.iter().enumerate() {
                    match e.to_socket_addrs().map(|mut a| a.next()) {
                        Ok(Some(addr)) => endpoints.push(addr),
                        _ => errors.add(
                            &p.key("endpoints").index(i),
                            format!("{e:?} is not a reachable host:port"),
                        ),
                    }
                }
                let ms = |errors: &mut Errors, v: i64, min: i64, key: &str| {
                    Duration::from_millis(positive(errors, v, min, 600_000, &p.key(key)) as u64)
                };
                let connect_timeout = ms(&mut errors, h.connect_timeout_ms, 1, "connect_timeout_ms");
                let timeout = ms(&mut errors, h.timeout_ms, 1, "timeout_ms");
                let hc = p.key("health_check");
                let health_interval = Duration::from_millis(positive(
                    &mut errors,
                    h.health_check.interval_ms,
                    10,
                    3_600_000,
                    &hc.key("interval_ms"),
                ) as u64);
                if !h.health_check.path.starts_with('/') {
                    errors.add(&hc.key("path"), "must start with '/'");
                }
                PoolSpec::Http(HttpSpec {
                    endpoints,
                    model: h.model,
                    version: positive(&mut errors, h.version, 1, u32::MAX as i64, &p.key("version")) as u64,
                    connect_timeout,
                    timeout,
                    health_interval,
                    health_path: h.health_check.path,
                })
            }
        };
        pool_specs.insert(name, spec);
    }

    let mut route_map = BTreeMap::new();
    for (i, r) in routes.into_iter().enumerate() {
        let path = root.key("routes").index(i);
        let file::RouteFile {
            model,
            stable,
            canary,
            sticky,
            salt,
            shadows,
        } = r;
        if !valid_name(&model) {
            errors.add(
                &path.key("model"),
                "model names may use letters, digits, '-', '_' and '.'",
            );
        }
        if route_map.contains_key(&model) {
            errors.add(
                &path.key("model"),
                format!("a route for {model:?} is already defined"),
            );
        }
        let pool_ref = |errors: &mut Errors, name: &str, at: Path| {
            if !pool_specs.contains_key(name) {
                let known: Vec<&str> = pool_specs.keys().map(String::as_str).collect();
                errors.add(
                    &at,
                    format!("no pool named {name:?} (pools: {})", known.join(", ")),
                );
            }
        };
        pool_ref(&mut errors, &stable, path.key("stable"));
        let canary = canary.map(|c| {
            pool_ref(&mut errors, &c.pool, path.key("canary").key("pool"));
            if c.pool == stable {
                errors.add(
                    &path.key("canary").key("pool"),
                    "the canary pool is the stable pool",
                );
            }
            let rollout = c
                .rollout
                .map(|r| rollout(&mut errors, r, &path.key("canary").key("rollout")));
            let weight = percent(&mut errors, c.weight, &path.key("canary").key("weight"));
            Canary {
                pool: c.pool,
                weight,
                configured_weight: weight,
                rollout,
            }
        });
        let shadows = shadows
            .into_iter()
            .enumerate()
            .map(|(j, s)| {
                let at = path.key("shadows").index(j);
                pool_ref(&mut errors, &s.pool, at.key("pool"));
                Shadow {
                    pool: s.pool,
                    percent: percent(&mut errors, s.percent, &at.key("percent")),
                }
            })
            .collect::<Vec<Shadow>>();
        if let Some(c) = &canary
            && c.rollout
                .as_ref()
                .is_some_and(|r| r.min_shadow_agreement.is_some())
            && !shadows.iter().any(|s| s.pool == c.pool)
        {
            errors.add(
                &path.key("canary").key("rollout").key("gates").key("min_shadow_agreement"),
                format!(
                    "needs a shadow of the canary pool to measure agreement: shadows: [{{pool: {}, percent: 10}}]",
                    c.pool
                ),
            );
        }
        let sticky = match sticky {
            None => Sticky::None,
            Some(StickyFile::Named(n)) if n == "none" => Sticky::None,
            Some(StickyFile::Named(n)) if n == "api_key" => Sticky::ApiKey,
            Some(StickyFile::Named(n)) => {
                errors.add(
                    &path.key("sticky"),
                    format!("{n:?} is not one of: none, api_key, {{header: NAME}}"),
                );
                Sticky::None
            }
            Some(StickyFile::Header { header }) => {
                if header.is_empty()
                    || !header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    errors.add(
                        &path.key("sticky").key("header"),
                        format!("{header:?} is not a header name"),
                    );
                }
                Sticky::Header(header.to_ascii_lowercase())
            }
        };
        let salt = salt.unwrap_or_else(|| model.clone());
        route_map.insert(
            model.clone(),
            Route {
                index: i,
                model,
                stable,
                canary,
                sticky,
                salt,
                shadows,
            },
        );
    }
    if route_map.is_empty() {
        errors.add(&root.key("routes"), "needs at least one route");
    }

    if !errors.list.is_empty() {
        return Err(errors.list);
    }
    Ok(Config {
        file: file.to_path_buf(),
        source: source.to_string(),
        https,
        admin,
        admin_hosts: listen.admin_hosts,
        client_address,
        tls_cert,
        tls_key,
        generate_dev_cert: tls.generate_dev_cert,
        keys_file,
        create_dev_key: auth.create_dev_key,
        keys,
        may_choose_variant,
        rate_limits,
        limits,
        threads,
        access_log: server.access_log,
        shutdown_grace,
        watch: server.watch,
        upgrade_sock,
        rollout_state: server.rollout_state.as_deref().map_or_else(
            || {
                shadow
                    .store
                    .parent()
                    .map_or_else(|| PathBuf::from("rollouts.json"), |d| d.join("rollouts.json"))
            },
            relative,
        ),
        log_format: server.log_format,
        shadow,
        pools: pool_specs,
        routes: route_map,
    })
}

fn positive(errors: &mut Errors, v: i64, min: i64, max: i64, path: &Path) -> usize {
    if v < min || v > max {
        errors.add(path, format!("must be between {min} and {max}, got {v}"));
        return min.max(0) as usize;
    }
    v as usize
}

fn rollout(errors: &mut Errors, r: file::RolloutFile, at: &Path) -> Rollout {
    if r.steps.is_empty() {
        errors.add(
            &at.key("steps"),
            "needs at least one weight, e.g. [5, 25, 50, 100]".to_string(),
        );
    }
    let mut steps = Vec::new();
    for (i, w) in r.steps.iter().enumerate() {
        let p = at.key("steps").index(i);
        if !(1..=100).contains(w) {
            errors.add(&p, format!("must be between 1 and 100, got {w}"));
        } else if steps
            .last()
            .is_some_and(|last| u8::try_from(*w).unwrap_or(0) <= *last)
        {
            errors.add(
                &p,
                format!("steps must rise; {w} follows {}", steps.last().unwrap_or(&0)),
            );
        } else {
            steps.push(*w as u8);
        }
    }
    let interval = match humantime::parse_duration(&r.interval) {
        Ok(d) if d >= Duration::from_secs(1) => d,
        Ok(_) => {
            errors.add(&at.key("interval"), "must be at least 1s".to_string());
            Duration::from_secs(1)
        }
        Err(e) => {
            errors.add(
                &at.key("interval"),
                format!("{:?}: {e} (e.g. 30s, 5m, 1h)", r.interval),
            );
            Duration::from_secs(60)
        }
    };
    let min_requests = positive(errors, r.min_requests, 1, 100_000_000, &at.key("min_requests")) as u64;
    let g = at.key("gates");
    let mut fraction = |v: Option<f64>, name: &str, max: f64| {
        v.inspect(|x| {
            if !x.is_finite() || *x < 0.0 || *x > max {
                errors.add(&g.key(name), format!("must be between 0 and {max}, got {x}"));
            }
        })
    };
    let max_error_rate_delta = fraction(r.gates.max_error_rate_delta, "max_error_rate_delta", 1.0);
    let max_p99_ratio = fraction(r.gates.max_p99_ratio, "max_p99_ratio", 1000.0);
    let min_shadow_agreement = fraction(r.gates.min_shadow_agreement, "min_shadow_agreement", 1.0);
    if max_error_rate_delta.is_none() && max_p99_ratio.is_none() && min_shadow_agreement.is_none() {
        errors.add(
            &g,
            "name at least one gate: max_error_rate_delta, max_p99_ratio or min_shadow_agreement".to_string(),
        );
    }
    let min_comparisons = positive(
        errors,
        r.gates.min_comparisons.unwrap_or(100),
        1,
        100_000_000,
        &g.key("min_comparisons"),
    ) as u64;
    Rollout {
        steps,
        interval,
        min_requests,
        max_error_rate_delta,
        max_p99_ratio,
        min_shadow_agreement,
        min_comparisons,
        on_failure: r.on_failure,
    }
}

fn percent(errors: &mut Errors, v: i64, path: &Path) -> u8 {
    if !(0..=100).contains(&v) {
        errors.add(path, format!("must be between 0 and 100, got {v}"));
        return 0;
    }
    v as u8
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
pub(crate) mod tests;
