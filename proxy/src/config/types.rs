//! What the gateway runs on: the validated config and its parts, produced from the file's
//! types (`file.rs`) by `parse` (`mod.rs`) and the section checks (`sections.rs`, `routes.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use inference::PoolConfig;

use super::keys::KeyStore;
use super::{ChooseVariant, ClientAddress, Limits, OnFailure, OnUnavailable};

/// A route's two variants (the split picks one per request; metrics and gates count by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    Stable,
    Canary,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        }
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
    pub endpoints: Vec<EndpointSpec>,
    /// How often names among the endpoints are looked up again.
    pub dns_refresh: Duration,
    pub model: String,
    pub version: u64,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub health_interval: Duration,
    /// `http` pools' health check path (empty for `grpc` pools, which ask `ModelReady`).
    pub health_path: String,
    pub protocol: RemoteProtocol,
    /// The reference profile (`profile.json`) input drift is measured against, if any.
    pub profile: Option<PathBuf>,
}

impl HttpSpec {
    /// The pool's kind, as routes.yaml names it.
    pub fn kind(&self) -> &'static str {
        match self.protocol {
            RemoteProtocol::Http => "http",
            RemoteProtocol::Grpc => "grpc",
        }
    }
}

/// A remote pool's endpoint as routes.yaml gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointSpec {
    /// An IP address and port: itself, for as long as the config stands.
    Address(SocketAddr),
    /// A host name and port: every address the name resolves to, looked up again every
    /// `dns_refresh` (a Kubernetes headless Service: one endpoint per ready pod).
    Name { host: String, port: u16 },
}

impl EndpointSpec {
    /// `ip:port` is an address; `name:port` a name (with a valid port); else `None`.
    pub fn parse(s: &str) -> Option<EndpointSpec> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Some(EndpointSpec::Address(addr));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok().filter(|&p| p > 0)?;
        let name_like = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        name_like.then(|| EndpointSpec::Name {
            host: host.to_string(),
            port,
        })
    }

    pub fn is_name(&self) -> bool {
        matches!(self, EndpointSpec::Name { .. })
    }

    /// The addresses it stands for now (a blocking lookup for a name).
    pub fn resolve_now(&self) -> std::io::Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        match self {
            EndpointSpec::Address(a) => Ok(vec![*a]),
            EndpointSpec::Name { host, port } => Ok((host.as_str(), *port).to_socket_addrs()?.collect()),
        }
    }
}

impl std::fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointSpec::Address(a) => write!(f, "{a}"),
            EndpointSpec::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// How a remote pool's servers are spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteProtocol {
    /// The Open Inference Protocol's REST (`http:` in routes.yaml).
    Http,
    /// `inference.GRPCInferenceService` over HTTP/2 without TLS (`grpc:`).
    Grpc,
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
    /// The canary traffic's largest feature PSI, at most.
    pub max_input_drift_psi: Option<f64>,
    /// Canary accuracy minus stable's (from feedback labels), at least...
    pub min_accuracy_delta: Option<f64>,
    /// ...once each variant has this many labels in the window.
    pub min_labels: u64,
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
    /// Copies are admitted while the process uses less than this share of its cores.
    pub max_cpu_percent: u32,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub store: PathBuf,
    pub keep_records: usize,
    pub keep_age: Duration,
    pub sample_agreements: f64,
    pub flush_interval: Duration,
    /// Bytes of records waiting for the store's writer, at most.
    pub max_backlog_bytes: usize,
    pub local_copies: LocalCopies,
    /// Copies waiting for the shadow runtime, and (apart) for each I/O thread, at most.
    pub max_queued: usize,
}

/// Where copies to local pools that only serve shadows run (`shadow.local_copies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalCopies {
    /// On the I/O threads when there are as many as cores the process may use (each has a
    /// core of its own, which the shadow thread would share), on the shadow thread otherwise.
    Auto,
    /// On the I/O thread that answered the request, in its quiet turns.
    IoThreads,
    /// On the shadow runtime's idle-priority thread.
    ShadowThread,
}

impl LocalCopies {
    pub const ALL: [LocalCopies; 3] = [
        LocalCopies::Auto,
        LocalCopies::IoThreads,
        LocalCopies::ShadowThread,
    ];

    /// The setting written as `name`, if there is one.
    pub fn parse(name: &str) -> Option<LocalCopies> {
        LocalCopies::ALL.into_iter().find(|c| c.name() == name)
    }

    /// As written in the file.
    pub fn name(self) -> &'static str {
        match self {
            LocalCopies::Auto => "auto",
            LocalCopies::IoThreads => "io_threads",
            LocalCopies::ShadowThread => "shadow_thread",
        }
    }
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
    /// The prediction cache of this route's answers (`None`: off).
    pub cache: Option<CacheSpec>,
}

/// A route's prediction cache (`cache:` of a route; docs/cache.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSpec {
    pub ttl: Duration,
    /// Bytes of cached answers (their keys included), at most.
    pub max_bytes: u64,
    /// Pools of the route with a TTL of their own; zero: never cached.
    pub pool_ttl: BTreeMap<String, Duration>,
}

impl CacheSpec {
    /// How long `pool`'s answers are served from the cache; zero when they are not cached.
    pub fn ttl_of(&self, pool: &str) -> Duration {
        self.pool_ttl.get(pool).copied().unwrap_or(self.ttl)
    }
}

impl Route {
    /// The pool that serves `variant` (a canary is chosen only when the route has one).
    pub fn pool(&self, variant: Variant) -> &str {
        match (variant, &self.canary) {
            (Variant::Canary, Some(c)) => &c.pool,
            _ => &self.stable,
        }
    }
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
    pub quality: super::quality::QualitySettings,
    pub pools: BTreeMap<String, PoolSpec>,
    pub routes: BTreeMap<String, Route>,
}
