//! `pools:` and `routes:`, checked: every pool well-formed (a local model file that exists, a
//! remote pool's endpoints `host:port`), every route's pools defined, weights and percents in
//! range, a rollout policy that can be judged.

use std::collections::BTreeMap;
use std::time::Duration;

use inference::PoolConfig;

use super::errors::{Errors, percent, positive, valid_name};
use super::file::{self, HttpPoolFile, LocalPoolFile, PoolFile, RouteFile, StickyFile};
use super::{
    CacheSpec, Canary, EndpointSpec, HttpSpec, Limits, LocalSpec, Path, PoolSpec, RemoteProtocol, Rollout,
    Route, Shadow, Sticky,
};

pub fn pools(
    errors: &mut Errors,
    pools: BTreeMap<String, PoolFile>,
    models_dir: &std::path::Path,
    limits: &Limits,
) -> BTreeMap<String, PoolSpec> {
    let mut pool_specs = BTreeMap::new();
    for (name, pool) in pools {
        let path = Path::root().key("pools").key(&name);
        if !valid_name(&name) {
            errors.add(&path, "pool names may use letters, digits, '-', '_' and '.'");
        }
        let spec = match (pool.local, pool.http, pool.grpc) {
            (Some(l), None, None) => local(errors, l, &path, models_dir, limits),
            (None, Some(h), None) => remote(errors, h, RemoteProtocol::Http, &path, models_dir),
            (None, None, Some(h)) => remote(errors, h, RemoteProtocol::Grpc, &path, models_dir),
            _ => {
                errors.add(&path, "must have exactly one of `local`, `http` or `grpc`");
                continue;
            }
        };
        pool_specs.insert(name, spec);
    }
    pool_specs
}

fn local(
    errors: &mut Errors,
    l: LocalPoolFile,
    path: &Path,
    models_dir: &std::path::Path,
    limits: &Limits,
) -> PoolSpec {
    let p = path.key("local");
    let version = positive(errors, l.version, 1, u32::MAX as i64, &p.key("version")) as u64;
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
            instances: positive(errors, l.instances, 1, 256, &p.key("instances")),
            max_batch: positive(errors, l.max_batch, 1, 65_536, &p.key("max_batch")),
            max_delay: micros(errors, l.max_delay_us, &p.key("max_delay_us")),
            queue_capacity: positive(errors, l.queue_capacity, 1, 1 << 20, &p.key("queue_capacity")),
            intra_threads: 1,
            reject_non_finite: true,
            idle_priority: false,
            max_rows: l.max_rows.map_or(limits.max_rows, |n| {
                positive(errors, n, 1, 10_000_000, &p.key("max_rows"))
            }),
            batching: match l.batching.as_deref().map(str::parse) {
                None => inference::Batching::Adaptive,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    errors.add(&p.key("batching"), e);
                    inference::Batching::Adaptive
                }
            },
            inline_max: micros(errors, l.inline_max_us, &p.key("inline_max_us")),
        },
    })
}

/// A pool's wait in microseconds, 0 to 1 s.
fn micros(errors: &mut Errors, value: i64, key: &Path) -> Duration {
    Duration::from_micros(positive(errors, value, 0, 1_000_000, key) as u64)
}

/// An `http` or `grpc` pool: the same fields, but a gRPC pool's health check is `ModelReady`.
fn remote(
    errors: &mut Errors,
    h: HttpPoolFile,
    protocol: RemoteProtocol,
    path: &Path,
    models_dir: &std::path::Path,
) -> PoolSpec {
    let p = path.key(match protocol {
        RemoteProtocol::Http => "http",
        RemoteProtocol::Grpc => "grpc",
    });
    // The reference profile for input drift: the one named, or the bundled model's if
    // models_dir has this model and version (a remote server of a bundled model).
    let profile = match &h.profile {
        Some(f) => {
            let f = models_dir.join(f);
            if !f.is_file() {
                errors.add(&p.key("profile"), format!("no profile file {}", f.display()));
            }
            Some(f)
        }
        None => Some(
            models_dir
                .join(&h.model)
                .join(h.version.to_string())
                .join("profile.json"),
        )
        .filter(|f| f.is_file()),
    };
    if h.endpoints.is_empty() {
        errors.add(&p.key("endpoints"), "needs at least one host:port");
    }
    // A name need not resolve here: an in-cluster name does not on a laptop, and the pool
    // looks it up again while running (`gateway check` warns; readiness waits for it).
    let mut endpoints = Vec::new();
    for (i, e) in h.endpoints.iter().enumerate() {
        match EndpointSpec::parse(e) {
            Some(spec) => endpoints.push(spec),
            None => errors.add(
                &p.key("endpoints").index(i),
                format!("{e:?} is not host:port (an IP address or a host name, and a port)"),
            ),
        }
    }
    let dns_refresh =
        Duration::from_millis(
            positive(errors, h.dns_refresh_ms, 100, 3_600_000, &p.key("dns_refresh_ms")) as u64,
        );
    let ms = |errors: &mut Errors, v: i64, min: i64, key: &str| {
        Duration::from_millis(positive(errors, v, min, 600_000, &p.key(key)) as u64)
    };
    let connect_timeout = ms(errors, h.connect_timeout_ms, 1, "connect_timeout_ms");
    let timeout = ms(errors, h.timeout_ms, 1, "timeout_ms");
    let hc = p.key("health_check");
    let health_interval = Duration::from_millis(positive(
        errors,
        h.health_check.interval_ms,
        10,
        3_600_000,
        &hc.key("interval_ms"),
    ) as u64);
    let health_path = match (protocol, h.health_check.path) {
        (RemoteProtocol::Http, None) => "/v2/health/ready".to_string(),
        (RemoteProtocol::Http, Some(path)) => {
            if !path.starts_with('/') {
                errors.add(&hc.key("path"), "must start with '/'");
            }
            path
        }
        (RemoteProtocol::Grpc, None) => String::new(),
        (RemoteProtocol::Grpc, Some(_)) => {
            errors.add(
                &hc.key("path"),
                "a grpc pool's health check asks ModelReady for its model and version: it has no path",
            );
            String::new()
        }
    };
    PoolSpec::Http(HttpSpec {
        endpoints,
        dns_refresh,
        model: h.model,
        version: positive(errors, h.version, 1, u32::MAX as i64, &p.key("version")) as u64,
        connect_timeout,
        timeout,
        health_interval,
        health_path,
        protocol,
        profile,
    })
}

pub fn routes(
    errors: &mut Errors,
    routes: Vec<RouteFile>,
    pool_specs: &BTreeMap<String, PoolSpec>,
) -> BTreeMap<String, Route> {
    let mut route_map = BTreeMap::new();
    for (i, r) in routes.into_iter().enumerate() {
        let route = route(errors, i, r, pool_specs, &route_map);
        route_map.insert(route.model.clone(), route);
    }
    if route_map.is_empty() {
        errors.add(&Path::root().key("routes"), "needs at least one route");
    }
    route_map
}

fn route(
    errors: &mut Errors,
    i: usize,
    r: RouteFile,
    pool_specs: &BTreeMap<String, PoolSpec>,
    route_map: &BTreeMap<String, Route>,
) -> Route {
    let path = Path::root().key("routes").index(i);
    let file::RouteFile {
        model,
        stable,
        canary,
        sticky,
        salt,
        shadows,
        cache,
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
    pool_ref(errors, &stable, path.key("stable"));
    let canary = canary.map(|c| {
        pool_ref(errors, &c.pool, path.key("canary").key("pool"));
        if c.pool == stable {
            errors.add(
                &path.key("canary").key("pool"),
                "the canary pool is the stable pool",
            );
        }
        let rollout = c
            .rollout
            .map(|r| rollout(errors, r, &path.key("canary").key("rollout")));
        let weight = percent(errors, c.weight, &path.key("canary").key("weight"));
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
            pool_ref(errors, &s.pool, at.key("pool"));
            Shadow {
                pool: s.pool,
                percent: percent(errors, s.percent, &at.key("percent")),
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
    let sticky = sticky_of(errors, sticky, &path);
    let salt = salt.unwrap_or_else(|| model.clone());
    let served: Vec<&str> = std::iter::once(stable.as_str())
        .chain(canary.as_ref().map(|c| c.pool.as_str()))
        .collect();
    let cache = cache.map(|c| cache_of(errors, c, &served, pool_specs, &path.key("cache")));
    Route {
        index: i,
        model,
        stable,
        canary,
        sticky,
        salt,
        shadows,
        cache,
    }
}

/// The longest TTL: an answer kept for a day is a lookup table, not a cache.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `max_bytes` (64 MiB: some 175,000 one-row answers of the bundled models).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

fn cache_of(
    errors: &mut Errors,
    c: file::CacheFile,
    served: &[&str],
    pool_specs: &BTreeMap<String, PoolSpec>,
    at: &Path,
) -> CacheSpec {
    let ttl_at =
        |errors: &mut Errors, text: &str, at: &Path, zero_ok: bool| match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && zero_ok => d,
            Ok(d) if d < Duration::from_secs(1) || d > MAX_TTL => {
                errors.add(at, format!("must be between 1s and 24h, got {text:?}"));
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                errors.add(at, format!("{text:?}: {e} (e.g. 30s, 5m, 1h)"));
                Duration::from_secs(1)
            }
        };
    let ttl = ttl_at(errors, &c.ttl, &at.key("ttl"), false);
    let max_bytes = match c.max_bytes {
        None => DEFAULT_CACHE_BYTES,
        Some(size) => {
            let parsed = match &size {
                file::SizeFile::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
                file::SizeFile::Text(t) => t
                    .parse::<bytesize::ByteSize>()
                    .map(|b| b.as_u64())
                    .map_err(|e| format!("{t:?}: {e} (e.g. 64MiB, 1GiB)")),
            };
            match parsed {
                Ok(n) if (64 << 10..=64 << 30).contains(&n) => n,
                Ok(n) => {
                    errors.add(
                        &at.key("max_bytes"),
                        format!("must be between 64KiB and 64GiB, got {n} bytes"),
                    );
                    DEFAULT_CACHE_BYTES
                }
                Err(e) => {
                    errors.add(&at.key("max_bytes"), e);
                    DEFAULT_CACHE_BYTES
                }
            }
        }
    };
    let mut pool_ttl = BTreeMap::new();
    for (pool, p) in c.pools {
        let p_at = at.key("pools").key(&pool);
        if !served.contains(&pool.as_str()) {
            errors.add(
                &p_at,
                format!(
                    "not a pool this route answers from (its pools: {})",
                    served.join(", ")
                ),
            );
        }
        pool_ttl.insert(pool, ttl_at(errors, &p.ttl, &p_at.key("ttl"), true));
    }
    let spec = CacheSpec {
        ttl,
        max_bytes,
        pool_ttl,
    };
    for pool in served {
        if let Some(PoolSpec::Http(h)) = pool_specs.get(*pool)
            && h.protocol == RemoteProtocol::Http
            && !spec.ttl_of(pool).is_zero()
        {
            errors.add(
                at,
                format!(
                    "pool {pool} is an http pool, whose bodies the gateway passes on undecoded and cannot key: give it `pools: {{{pool}: {{ttl: 0s}}}}` or serve it through a local or grpc pool"
                ),
            );
        }
    }
    spec
}

fn sticky_of(errors: &mut Errors, sticky: Option<StickyFile>, path: &Path) -> Sticky {
    match sticky {
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
    }
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
    let max_input_drift_psi = fraction(r.gates.max_input_drift_psi, "max_input_drift_psi", 100.0);
    let min_accuracy_delta = r.gates.min_accuracy_delta.inspect(|x| {
        if !x.is_finite() || !(-1.0..=1.0).contains(x) {
            errors.add(
                &g.key("min_accuracy_delta"),
                format!("must be between -1 and 1, got {x}"),
            );
        }
    });
    if [
        max_error_rate_delta,
        max_p99_ratio,
        min_shadow_agreement,
        max_input_drift_psi,
        min_accuracy_delta,
    ]
    .iter()
    .all(Option::is_none)
    {
        errors.add(
            &g,
            "name at least one gate: max_error_rate_delta, max_p99_ratio, min_shadow_agreement, max_input_drift_psi or min_accuracy_delta".to_string(),
        );
    }
    let min_labels = positive(
        errors,
        r.gates.min_labels.unwrap_or(100),
        1,
        100_000_000,
        &g.key("min_labels"),
    ) as u64;
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
        max_input_drift_psi,
        min_accuracy_delta,
        min_labels,
        on_failure: r.on_failure,
    }
}
