//! What one request sees from start to end: a [`Snapshot`] of the validated config with its
//! pools and keys, swapped as a whole (arc-swap) so that a reload never lands half-way
//! through a request.

use std::collections::BTreeMap;
use std::sync::Arc;

use inference::Pool;

use crate::config::{Config, ConfigError, Errors, Path, PoolSpec, Route};
use crate::keys::KeyStore;
use crate::remote::RemotePool;

/// Where a pool's requests go.
#[derive(Clone)]
pub enum Backend {
    /// In-process ONNX Runtime pool.
    Local(Arc<Pool>),
    /// Remote Open Inference Protocol servers.
    Remote(Arc<RemotePool>),
}

pub struct Snapshot {
    pub config: Config,
    pub pools: BTreeMap<String, Backend>,
    pub keys: KeyStore,
    /// Per route: shadow requests in flight, at most `shadow.max_in_flight`.
    pub shadow_slots: BTreeMap<String, Arc<tokio::sync::Semaphore>>,
}

impl Snapshot {
    /// Loads every pool (models into ONNX Runtime, load balancers for remote pools) and
    /// checks what can only be checked then: that a route's variants take the same inputs.
    pub fn build(config: Config) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Errors::new(&config.file, &config.source);
        let mut pools = BTreeMap::new();
        for (name, spec) in &config.pools {
            match spec {
                PoolSpec::Local(l) => {
                    let mut pool_config = l.pool.clone();
                    if shadow_only(&config, name) {
                        // Copies for comparison yield the CPU to the client path.
                        pool_config.idle_priority = true;
                    }
                    match Pool::load(&l.model, &l.version.to_string(), &l.path, pool_config) {
                        Ok(pool) => {
                            pools.insert(name.clone(), Backend::Local(Arc::new(pool)));
                        }
                        Err(e) => errors.add(
                            &Path::root().key("pools").key(name).key("local").key("model"),
                            e.to_string(),
                        ),
                    }
                }
                PoolSpec::Http(h) => match RemotePool::new(name, h.clone()) {
                    Ok(pool) => {
                        pools.insert(name.clone(), Backend::Remote(Arc::new(pool)));
                    }
                    Err(e) => errors.add(&Path::root().key("pools").key(name).key("http"), e),
                },
            }
        }
        for route in config.routes.values() {
            check_variants_agree(route, &pools, &mut errors);
        }
        if !errors.list.is_empty() {
            return Err(errors.list);
        }
        let keys = config.keys.clone().unwrap_or_default();
        let shadow_slots = config
            .routes
            .keys()
            .map(|r| {
                (
                    r.clone(),
                    Arc::new(tokio::sync::Semaphore::new(config.shadow.max_in_flight)),
                )
            })
            .collect();
        Ok(Snapshot {
            config,
            pools,
            keys,
            shadow_slots,
        })
    }

    pub fn route(&self, model: &str) -> Option<&Route> {
        self.config.routes.get(model)
    }
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
