//! `routes.yaml` as written by operators: plain serde types, every struct closed with
//! `deny_unknown_fields` so that a misspelt key is an error, not a silently ignored line.
//! Numbers that have a valid range are read wide (i64) so that the validator, not serde,
//! reports them — with the range and the place in the file.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenFile,
    pub tls: TlsFile,
    pub auth: AuthFile,
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub shadow: ShadowSettingsFile,
    /// Input drift and feedback (`config/quality.rs`).
    #[serde(default)]
    pub quality: super::quality::QualityFile,
    /// Where `local` pools find `<model>/<version>/model.onnx`, relative to this file.
    #[serde(default = "default_models_dir")]
    pub models_dir: String,
    pub pools: BTreeMap<String, PoolFile>,
    pub routes: Vec<RouteFile>,
}

fn default_models_dir() -> String {
    "models".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    #[serde(default = "default_https")]
    pub https: String,
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Host names the admin listener answers to besides its own address (and `localhost`
    /// on loopback): any other `Host` is refused, so a web page cannot reach it through DNS
    /// rebinding.
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// Networks (CIDR) whose connections start with a PROXY protocol header (v1 or v2) from
    /// a load balancer: the client address is the header's. Others send none.
    #[serde(default)]
    pub proxy_protocol: Vec<String>,
    /// Networks (CIDR) of proxies whose `X-Forwarded-For` is believed: the client address is
    /// the last one in it that is not such a proxy.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_https() -> String {
    "0.0.0.0:8443".into()
}

fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

impl Default for ListenFile {
    fn default() -> Self {
        ListenFile {
            https: default_https(),
            admin: default_admin(),
            admin_hosts: Vec::new(),
            proxy_protocol: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
    /// When both files are missing, make a development CA and a `localhost` certificate.
    #[serde(default)]
    pub generate_dev_cert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub keys_file: String,
    /// When the keys file is missing, create it with one development key (printed once).
    #[serde(default)]
    pub create_dev_key: bool,
    /// Who may choose the variant that answers (`x-canary`, or a versioned path): these
    /// tenants and key ids. Anyone else's `x-canary` is ignored (the split decides).
    #[serde(default)]
    pub may_choose_variant: ChooseVariantFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChooseVariantFile {
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub per_second: i64,
    pub burst: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// Per API key, for keys whose tier has no entry in `tiers`.
    #[serde(default = "default_rate")]
    pub default: RateFile,
    #[serde(default)]
    pub tiers: BTreeMap<String, RateFile>,
    /// Per client IP, for the paths that need no key (health, metadata).
    #[serde(default = "default_ip_rate")]
    pub per_ip: RateFile,
    /// Most clients (keys or IPs) whose limiter state is kept; the least recently seen are
    /// forgotten beyond this, so memory stays bounded whatever the traffic.
    #[serde(default = "default_tracked")]
    pub max_tracked_clients: i64,
    /// Share per-key limits across replicas through Redis; absent: each replica limits alone.
    #[serde(default)]
    pub redis: Option<RedisFile>,
    /// Failed authentications (missing, unknown or disabled key) per client address; past
    /// it the address gets 429 without its key being looked at.
    #[serde(default = "default_auth_failure_rate")]
    pub auth_failures: RateFile,
}

fn default_auth_failure_rate() -> RateFile {
    RateFile {
        per_second: 1,
        burst: 20,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[:password@]host[:port][/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Prefix of the keys the limiter writes, so that several gateways' fleets can share one
    /// Redis without sharing allowances.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// A Redis answer slower than this counts as Redis being unavailable.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: i64,
    /// What to do while Redis cannot be reached.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

fn default_redis_prefix() -> String {
    "gateway:rl".into()
}

fn default_redis_timeout() -> i64 {
    50
}

/// While the shared limiter cannot answer: `open` limits each replica by itself (its local
/// GCRA, the same quota), `closed` refuses keyed requests with 503.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    #[default]
    Open,
    Closed,
}

impl OnUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Open => "open",
            OnUnavailable::Closed => "closed",
        }
    }
}

fn default_rate() -> RateFile {
    RateFile {
        per_second: 200,
        burst: 400,
    }
}

fn default_ip_rate() -> RateFile {
    RateFile {
        per_second: 50,
        burst: 100,
    }
}

fn default_tracked() -> i64 {
    100_000
}

impl Default for RateLimitsFile {
    fn default() -> Self {
        RateLimitsFile {
            default: default_rate(),
            tiers: BTreeMap::new(),
            per_ip: default_ip_rate(),
            max_tracked_clients: default_tracked(),
            redis: None,
            auth_failures: default_auth_failure_rate(),
        }
    }
}

/// What one client may hold: sizes, time, connections, work. `docs/limits.md` gives each
/// limit's reason, its status code and the nginx and Envoy settings it stands for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default = "default_body")]
    pub max_body_bytes: i64,
    #[serde(default = "default_header")]
    pub max_header_bytes: i64,
    /// A connection's PROXY header and TLS handshake, from accept.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: i64,
    /// A request's whole header block (HTTP/1.1), from its first byte.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: i64,
    /// A request's whole body, from the end of its header.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: i64,
    /// A connection with no request in flight (HTTP/1.1 keep-alive, HTTP/2) is closed after.
    #[serde(default = "default_idle")]
    pub idle_timeout_s: i64,
    /// Client connections open at once; more are closed as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: i64,
    /// Rows per request, for local pools that do not set their own.
    #[serde(default = "default_max_rows")]
    pub max_rows: i64,
    /// The largest answer a local pool's request may get.
    #[serde(default = "default_max_answer")]
    pub max_answer_bytes: i64,
    /// Bytes of request bodies and decoded tensors in flight, all requests together.
    #[serde(default = "default_inflight")]
    pub max_inflight_bytes: i64,
    /// The part of `max_inflight_bytes` one API key may hold.
    #[serde(default = "default_inflight_per_key")]
    pub max_inflight_bytes_per_key: i64,
}

fn default_body() -> i64 {
    4 << 20
}

fn default_header() -> i64 {
    16 << 10
}

fn default_handshake_timeout() -> i64 {
    10_000
}

fn default_header_timeout() -> i64 {
    10_000
}

fn default_body_timeout() -> i64 {
    30_000
}

fn default_idle() -> i64 {
    60
}

fn default_max_connections() -> i64 {
    8192
}

fn default_max_rows() -> i64 {
    inference::pool::DEFAULT_MAX_ROWS as i64
}

fn default_max_answer() -> i64 {
    inference::protocol::DEFAULT_MAX_ANSWER_BYTES as i64
}

fn default_inflight() -> i64 {
    256 << 20
}

fn default_inflight_per_key() -> i64 {
    64 << 20
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_body_bytes: default_body(),
            max_header_bytes: default_header(),
            handshake_timeout_ms: default_handshake_timeout(),
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            idle_timeout_s: default_idle(),
            max_connections: default_max_connections(),
            max_rows: default_max_rows(),
            max_answer_bytes: default_max_answer(),
            max_inflight_bytes: default_inflight(),
            max_inflight_bytes_per_key: default_inflight_per_key(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Threads for network I/O (default: one per core).
    #[serde(default)]
    pub threads: Option<i64>,
    /// One access-log line per request on stderr (off: metrics only).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// On SIGTERM: stop accepting, then give requests in flight up to this long (seconds).
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: i64,
    /// Reload by itself when the config, keys or certificate files change.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Where an old and a new gateway process hand over the listening sockets
    /// (`gateway run --upgrade`, then SIGQUIT to the old one).
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object per line, for log pipelines).
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// The rollout engine's own state (step, weight, decisions), so a restart resumes.
    /// Default: `rollouts.json` beside the shadow store, the one place the gateway writes
    /// (writable in the shipped compose and Kubernetes setups, where the config is not).
    #[serde(default)]
    pub rollout_state: Option<String>,
}

fn default_log_format() -> String {
    "text".into()
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            threads: None,
            access_log: true,
            shutdown_grace_s: default_grace(),
            watch: true,
            upgrade_sock: None,
            log_format: default_log_format(),
            rollout_state: None,
        }
    }
}

fn default_grace() -> i64 {
    15
}

fn default_true() -> bool {
    true
}

/// How shadow copies are made, compared and kept (the shadows themselves are per route).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSettingsFile {
    /// Shadow requests in flight per route; beyond this a copy is dropped (and counted).
    #[serde(default = "default_shadow_in_flight")]
    pub max_in_flight: i64,
    /// Copies are made while the process uses less than this share of its cores.
    #[serde(default = "default_shadow_cpu")]
    pub max_cpu_percent: i64,
    /// A shadow's answer is waited for this long, then recorded as a shadow error.
    #[serde(default = "default_shadow_timeout")]
    pub timeout_ms: i64,
    /// Request bodies over this size are not mirrored (counted as dropped).
    #[serde(default = "default_shadow_body")]
    pub max_body_bytes: i64,
    /// The comparison store (SQLite), relative to this file.
    #[serde(default = "default_shadow_store")]
    pub store: String,
    /// Most comparison records kept (disagreements, errors, sampled agreements).
    #[serde(default = "default_keep_records")]
    pub keep_records: i64,
    /// Records and per-minute aggregates older than this are deleted.
    #[serde(default = "default_keep_hours")]
    pub keep_hours: i64,
    /// Fraction of agreeing pairs recorded with their inputs and outputs (all disagreements are).
    #[serde(default = "default_sample_agreements")]
    pub sample_agreements: f64,
    /// Records are written in one batch per interval: a crash loses at most this much
    /// while the writer keeps up.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: i64,
    /// Records waiting to be written, at most (bytes): beyond, they are dropped and counted.
    #[serde(default = "default_backlog")]
    pub max_backlog_bytes: i64,
    /// Where copies to shadow-only local pools run: `auto`, `io_threads` or `shadow_thread`.
    #[serde(default = "default_local_copies")]
    pub local_copies: String,
    /// Copies waiting for the shadow runtime, and for each I/O thread's quiet turns, at most.
    #[serde(default = "default_max_queued")]
    pub max_queued: i64,
}

fn default_max_queued() -> i64 {
    4096
}

fn default_local_copies() -> String {
    "auto".into()
}

fn default_backlog() -> i64 {
    64 << 20
}

fn default_shadow_in_flight() -> i64 {
    64
}

fn default_shadow_timeout() -> i64 {
    1000
}

fn default_shadow_body() -> i64 {
    256 << 10
}

/// Relative to the config file; `data/` is git-ignored.
pub const DEFAULT_SHADOW_STORE: &str = "data/shadows.sqlite3";

fn default_shadow_store() -> String {
    DEFAULT_SHADOW_STORE.into()
}

fn default_keep_records() -> i64 {
    100_000
}

fn default_keep_hours() -> i64 {
    24 * 7
}

fn default_sample_agreements() -> f64 {
    0.01
}

fn default_shadow_cpu() -> i64 {
    100
}

fn default_flush_ms() -> i64 {
    500
}

impl Default for ShadowSettingsFile {
    fn default() -> Self {
        ShadowSettingsFile {
            max_in_flight: default_shadow_in_flight(),
            max_cpu_percent: default_shadow_cpu(),
            timeout_ms: default_shadow_timeout(),
            max_body_bytes: default_shadow_body(),
            store: default_shadow_store(),
            keep_records: default_keep_records(),
            keep_hours: default_keep_hours(),
            sample_agreements: default_sample_agreements(),
            flush_ms: default_flush_ms(),
            max_backlog_bytes: default_backlog(),
            local_copies: default_local_copies(),
            max_queued: default_max_queued(),
        }
    }
}

/// `{local: {...}}`, `{http: {...}}` or `{grpc: {...}}`: exactly one (checked by the validator).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// In-process ONNX Runtime pool: no network hop.
    #[serde(default)]
    pub local: Option<LocalPoolFile>,
    /// Remote Open Inference Protocol servers (inference-server, Triton), over REST.
    #[serde(default)]
    pub http: Option<HttpPoolFile>,
    /// The same over gRPC (`inference.GRPCInferenceService`: Triton's port 8001,
    /// `inference-server --grpc-listen`); the fields are `http`'s.
    #[serde(default)]
    pub grpc: Option<HttpPoolFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPoolFile {
    pub model: String,
    pub version: i64,
    #[serde(default = "one")]
    pub instances: i64,
    #[serde(default = "default_max_batch")]
    pub max_batch: i64,
    #[serde(default = "default_max_delay")]
    pub max_delay_us: i64,
    /// `adaptive` (a lone request runs at once; a batch waits for more only while another
    /// instance runs) or `fixed` (always up to `max_delay_us`).
    #[serde(default)]
    pub batching: Option<String>,
    /// A lone request of a few rows runs on the connection's own thread, without waking a
    /// worker, when the model runs one in under this (measured); 0: always a worker.
    #[serde(default = "default_inline_max")]
    pub inline_max_us: i64,
    #[serde(default = "default_queue")]
    pub queue_capacity: i64,
    /// Rows per request (default: `limits.max_rows`).
    #[serde(default)]
    pub max_rows: Option<i64>,
}

fn one() -> i64 {
    1
}

fn default_max_batch() -> i64 {
    32
}

fn default_max_delay() -> i64 {
    250
}

fn default_inline_max() -> i64 {
    inference::pool::DEFAULT_INLINE_MAX.as_micros() as i64
}

fn default_queue() -> i64 {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPoolFile {
    /// `host:port` of each server; requests go round-robin over the healthy ones. A host
    /// name stands for every address it resolves to, looked up again every `dns_refresh_ms`.
    pub endpoints: Vec<String>,
    pub model: String,
    pub version: i64,
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh_ms: i64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: i64,
    /// Longest wait for the upstream's answer once the request is sent.
    #[serde(default = "default_timeout")]
    pub timeout_ms: i64,
    #[serde(default)]
    pub health_check: HealthCheckFile,
    /// The model's reference profile for input drift, relative to `models_dir`.
    #[serde(default)]
    pub profile: Option<String>,
}

/// Names are looked up again this often: a Kubernetes headless Service's pods come and go
/// within seconds, and the lookup (one getaddrinfo per name) costs next to nothing.
fn default_dns_refresh() -> i64 {
    5000
}

fn default_connect_timeout() -> i64 {
    200
}

fn default_timeout() -> i64 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default = "default_hc_interval")]
    pub interval_ms: i64,
    /// `http` pools: the path asked (default `/v2/health/ready`). `grpc` pools ask
    /// `ModelReady` for their model and version instead, and take no path.
    #[serde(default)]
    pub path: Option<String>,
}

fn default_hc_interval() -> i64 {
    1000
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            interval_ms: default_hc_interval(),
            path: None,
        }
    }
}

pub use super::route_file::*;
