//! What one request sees from start to end: a [`Snapshot`] of the validated config with its
//! pools and keys, swapped as a whole (arc-swap) so that a reload never lands half-way
//! through a request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use inference::Pool;

use crate::admission::ratelimit::RateLimiters;
use crate::admission::ratelimit::shared::SharedLimiter;
use crate::cache::RouteCache;
use crate::config::keys::KeyStore;
use crate::config::{Config, ConfigError, Errors, Path, PoolSpec, Route};
use crate::pools::remote::RemotePool;
use crate::quality::profile::Profile;

/// Where a pool's requests go.
#[derive(Clone)]
pub enum Backend {
    /// In-process ONNX Runtime pool.
    Local(Arc<Pool>),
    /// Remote Open Inference Protocol servers.
    Remote(Arc<RemotePool>),
}

impl Backend {
    /// Can serve now: a local pool whose model has not failed its last runs, a remote pool
    /// with a healthy endpoint.
    pub fn ready(&self) -> bool {
        match self {
            Backend::Local(p) => p.healthy(),
            Backend::Remote(r) => r.healthy_endpoints() > 0,
        }
    }
}

pub struct Snapshot {
    pub config: Config,
    pub pools: BTreeMap<String, Backend>,
    pub keys: KeyStore,
    /// Rate-limiter state; carried over by a reload that leaves `rate_limits` unchanged, so
    /// that editing a weight does not hand every client a fresh burst.
    pub limiters: Arc<RateLimiters>,
    /// Per-key limits shared across replicas (`rate_limits.redis`), checked before
    /// `limiters`; `None` when each replica limits by itself.
    pub shared_limiter: Option<Arc<SharedLimiter>>,
    /// Per route: shadow requests in flight, at most `shadow.max_in_flight`.
    pub shadow_slots: BTreeMap<String, Arc<tokio::sync::Semaphore>>,
    /// Each route variant's per-request metric series, found once per snapshot.
    pub series: crate::telemetry::metrics::SeriesCache,
    /// The reference profile of each pool's model version that has one (input drift).
    pub profiles: BTreeMap<String, Arc<Profile>>,
    /// Per route with `cache:`, its prediction cache; carried over by a reload that leaves
    /// the route's cache settings unchanged (minus the entries of pools whose version moved).
    pub caches: BTreeMap<String, Arc<RouteCache>>,
}

/// A warm-up inference slower than this fails the load: the model would not serve either.
const WARM_TIMEOUT: Duration = Duration::from_secs(30);

impl Snapshot {
    /// Loads every pool (models into ONNX Runtime and warmed with one inference; remote
    /// pools health-checked once) and checks what can only be checked then: that a route's
    /// variants take the same inputs.
    pub fn build(config: Config) -> Result<Snapshot, Vec<ConfigError>> {
        Self::build_from(config, None)
    }

    /// Like [`Snapshot::build`], but takes over from `previous` every pool whose definition
    /// is unchanged (so a weight edit loads nothing), the limiters when `rate_limits` is
    /// unchanged, and each surviving route's shadow slots.
    pub fn build_from(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Errors::new(&config.file, &config.source);
        let mut pools = BTreeMap::new();
        let mut new_remotes = Vec::new();
        for (name, spec) in &config.pools {
            let idle = shadow_only(&config, name);
            if let Some(previous) = previous
                && previous.config.pools.get(name) == Some(spec)
                && shadow_only(&previous.config, name) == idle
                && let Some(backend) = previous.pools.get(name)
            {
                pools.insert(name.clone(), backend.clone());
                continue;
            }
            match spec {
                PoolSpec::Local(l) => {
                    let mut pool_config = l.pool.clone();
                    if idle {
                        shadow_pool_config(&mut pool_config);
                    }
                    let at = Path::root().key("pools").key(name).key("local").key("model");
                    let loaded = Pool::load(&l.model, &l.version.to_string(), &l.path, pool_config)
                        .map_err(|e| e.to_string())
                        .and_then(|pool| pool.warm(WARM_TIMEOUT).map(|()| pool));
                    match loaded {
                        Ok(pool) => {
                            pools.insert(name.clone(), Backend::Local(Arc::new(pool)));
                        }
                        Err(e) => errors.add(&at, format!("{}: {e}", l.path.display())),
                    }
                }
                PoolSpec::Http(h) => {
                    let pool = Arc::new(RemotePool::new(name, h.clone()));
                    new_remotes.push(pool.clone());
                    pools.insert(name.clone(), Backend::Remote(pool));
                }
            }
        }
        for route in config.routes.values() {
            check_variants_agree(route, &pools, &mut errors);
        }
        let profiles = load_profiles(&config, &pools, &mut errors);
        if !errors.list.is_empty() {
            return Err(errors.list);
        }
        // The shared limiter's connection is kept while its settings are (and its keys'
        // state lives in Redis anyway); it connects lazily, so a Redis that is down does not
        // stop a start or a reload: the configured policy applies until it answers.
        let shared_limiter = match (&config.rate_limits.redis, previous) {
            (None, _) => None,
            (Some(r), Some(p)) if p.config.rate_limits.redis.as_ref() == Some(r) => p.shared_limiter.clone(),
            (Some(r), _) => match SharedLimiter::new(r) {
                Ok(l) => Some(Arc::new(l)),
                Err(e) => {
                    errors.add(&Path::root().key("rate_limits").key("redis"), e);
                    return Err(errors.list);
                }
            },
        };
        // Learn new remote pools' health (and signatures) before the first request, not after.
        first_health_check(&new_remotes);
        let keys = config.keys.clone().unwrap_or_default();
        let limiters = match previous {
            Some(p) if p.config.rate_limits == config.rate_limits => p.limiters.clone(),
            _ => Arc::new(RateLimiters::new(&config.rate_limits)),
        };
        let cap = config.shadow.max_in_flight;
        let shadow_slots = config
            .routes
            .keys()
            .map(|r| {
                let kept = previous
                    .filter(|p| p.config.shadow.max_in_flight == cap)
                    .and_then(|p| p.shadow_slots.get(r).cloned());
                (
                    r.clone(),
                    kept.unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(cap))),
                )
            })
            .collect();
        let caches = caches(&config, previous);
        Ok(Snapshot {
            series: crate::telemetry::metrics::SeriesCache::new(config.routes.keys()),
            profiles,
            caches,
            config,
            pools,
            keys,
            limiters,
            shared_limiter,
            shadow_slots,
        })
    }

    pub fn route(&self, model: &str) -> Option<&Route> {
        self.config.routes.get(model)
    }

    /// This snapshot with other keys (a reload of the keys file alone): everything else is
    /// shared, nothing is loaded.
    pub fn with_keys(&self, keys: KeyStore) -> Snapshot {
        let mut config = self.config.clone();
        config.keys = Some(keys.clone());
        Snapshot {
            series: crate::telemetry::metrics::SeriesCache::new(config.routes.keys()),
            config,
            pools: self.pools.clone(),
            keys,
            limiters: self.limiters.clone(),
            shared_limiter: self.shared_limiter.clone(),
            shadow_slots: self.shadow_slots.clone(),
            profiles: self.profiles.clone(),
            caches: self.caches.clone(),
        }
    }
}

/// Each cached route's cache: the previous one when its settings are unchanged, with the
/// entries of pools now serving another model version freed; otherwise a new, empty one.
fn caches(config: &Config, previous: Option<&Snapshot>) -> BTreeMap<String, Arc<RouteCache>> {
    let mut out = BTreeMap::new();
    for (name, route) in &config.routes {
        let Some(spec) = &route.cache else { continue };
        let kept = previous
            .and_then(|p| p.caches.get(name))
            .filter(|c| c.spec() == spec)
            .cloned();
        let cache = match kept {
            Some(c) => {
                let served = std::iter::once(&route.stable)
                    .chain(route.canary.as_ref().map(|c| &c.pool))
                    .map(|p| (p.clone(), config.pools[p].version().to_string()))
                    .collect();
                c.retain(served);
                c
            }
            None => Arc::new(RouteCache::new(
                spec.clone(),
                Arc::new(crate::cache::Monotonic::new()),
            )),
        };
        out.insert(name.clone(), cache);
    }
    out
}

/// Each pool's reference profile: `profile.json` beside a local pool's `model.onnx`, or the
/// file a remote pool names. Small files, read on every build; a broken one refuses the
/// config (drift against a wrong reference would mislead).
fn load_profiles(
    config: &Config,
    pools: &BTreeMap<String, Backend>,
    errors: &mut Errors,
) -> BTreeMap<String, Arc<Profile>> {
    let mut profiles = BTreeMap::new();
    for (name, spec) in &config.pools {
        let (file, at) = match spec {
            PoolSpec::Local(l) => (
                Some(l.path.with_file_name("profile.json")).filter(|f| f.is_file()),
                "local",
            ),
            PoolSpec::Http(h) => (h.profile.clone(), h.kind()),
        };
        let Some(file) = file else { continue };
        // The model's features per row, when its signature is known.
        let width = match pools.get(name) {
            Some(Backend::Local(p)) => p.metadata().inputs.first().and_then(|i| i.shape.get(1)).copied(),
            _ => None,
        }
        .and_then(|w| usize::try_from(w).ok());
        match Profile::load(&file, width) {
            Ok(p) => {
                profiles.insert(name.clone(), Arc::new(p));
            }
            Err(e) => errors.add(&Path::root().key("pools").key(name).key(at), e),
        }
    }
    profiles
}

/// One health check of each pool, on a thread of its own: the caller may itself be inside
/// an async runtime.
fn first_health_check(remotes: &[Arc<RemotePool>]) {
    if remotes.is_empty() {
        return;
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(async {
                    for r in remotes {
                        r.maintain(true).await;
                    }
                }),
                // The upkeep loop checks them a moment later anyway.
                Err(e) => tracing::warn!(error = %e, "first health check of remote pools skipped"),
            }
        });
    });
}

/// A pool that only serves shadow copies batches for throughput, not latency: no client
/// waits for its answer, so its workers always wait for company (fixed-delay batching, its
/// own `max_delay_us` and `max_batch`) and run at idle priority, yielding the CPU to the
/// client path. Most copies to it do not reach its workers: the shadow runtime runs them
/// itself, a tick's worth per run (`shadow/local.rs`). (Raising its delay to 1 ms and its
/// batch to 64 rows lost copies in `proxy/tests/shadows.rs`, three runs in four; not
/// understood yet, so not done.)
fn shadow_pool_config(config: &mut inference::PoolConfig) {
    config.idle_priority = true;
    config.batching = inference::Batching::Fixed;
}

/// A pool that routes use only as a shadow.
fn shadow_only(config: &Config, pool: &str) -> bool {
    let mut as_shadow = false;
    for r in config.routes.values() {
        if r.stable == pool || r.canary.as_ref().is_some_and(|c| c.pool == pool) {
            return false;
        }
        as_shadow |= r.shadows.iter().any(|s| s.pool == pool);
    }
    as_shadow
}

/// A canary or shadow that takes other inputs than the stable pool would fail every request
/// it gets; refuse the config instead (local pools only: remote signatures are learnt later).
fn check_variants_agree(route: &Route, pools: &BTreeMap<String, Backend>, errors: &mut Errors) {
    let signature = |name: &str| match pools.get(name) {
        Some(Backend::Local(p)) => Some(p.metadata().inputs.clone()),
        _ => None,
    };
    let Some(stable) = signature(&route.stable) else {
        return;
    };
    let others = route
        .canary
        .iter()
        .map(|c| &c.pool)
        .chain(route.shadows.iter().map(|s| &s.pool));
    for other in others {
        if let Some(inputs) = signature(other)
            && inputs != stable
        {
            let describe = |specs: &[inference::TensorSpec]| {
                specs.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; ")
            };
            errors.add(
                &Path::root().key("routes").index(route.index),
                format!(
                    "pool {other:?} takes [{}] but the stable pool {:?} takes [{}]",
                    describe(&inputs),
                    route.stable,
                    describe(&stable)
                ),
            );
        }
    }
}
