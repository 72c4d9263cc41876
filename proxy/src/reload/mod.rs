//! Hot reload of `routes.yaml`, the keys file and the TLS certificate, without dropping a
//! request.
//!
//! The keys file reloads on its own ([`Reloader::reload_keys`]): a revoked key is refused
//! within the watcher's debounce whatever the state of `routes.yaml` or the certificate, and
//! a broken keys file is refused (the keys in force stay) without holding up `routes.yaml`.
//!
//! One pipeline for every trigger (file watcher, `SIGHUP`, `POST /admin/reload`):
//! read → content hash (unchanged content is not a reload) → parse and validate exactly as
//! `gateway check` does → build what is new (models loaded and warmed with one inference,
//! remote pools health-checked, limiters) while reusing every pool whose definition did not
//! change → one atomic swap of the snapshot. A request holds the snapshot it started with, so
//! it finishes on the old config; pools the new config dropped are shut down on a thread of
//! their own once their last request is done. Any failure before the swap leaves the old
//! config serving; the error, with file, line and column, is logged, counted and kept for
//! `GET /admin/config`.

pub mod diff;
mod retire;
pub mod ticker;
pub mod watch;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{self, Config, ConfigError, Errors, Path as YamlPath};
use crate::http::tls::{self, CertResolver};
use crate::rollout::Rollouts;
use crate::routing::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;
pub use diff::Diff;

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first load, at start.
    Start,
    /// The watcher saw a file change.
    File,
    /// `SIGHUP`.
    Signal,
    /// `POST /admin/reload`.
    Admin,
    /// The rollout engine moved a weight (or the operator told it to).
    Rollout,
}

/// A reload that took effect.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub generation: u64,
    pub hash: String,
    pub at: String,
    pub trigger: Trigger,
    pub diff: Diff,
}

/// A reload that was refused; the config before it kept serving.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub at: String,
    pub trigger: Trigger,
    pub hash: String,
    pub errors: Vec<String>,
}

impl Rejected {
    fn new(trigger: Trigger, hash: String, errors: &[impl ToString]) -> Rejected {
        Rejected {
            at: now(),
            trigger,
            hash,
            errors: errors.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The result of one attempt.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The files hash to what is in force (or to what was last refused, for the watcher).
    Unchanged,
    Applied(Box<Applied>),
    Rejected(Rejected),
}

/// How many applied reloads `GET /admin/config/diff` lists.
const HISTORY: usize = 32;

/// What `GET /admin/config` shows about reloads.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generation: u64,
    pub hash: String,
    pub loaded_at: String,
    pub last_error: Option<Rejected>,
    /// True while the files on disk are a version that was refused (the config in force is
    /// then older than the files); false once they are fixed or match what is in force.
    pub files_rejected: bool,
    /// Settings edited in the file that only a restart applies.
    pub restart_required: Vec<String>,
    /// The keys file, which reloads on its own.
    pub keys: KeysStatus,
    #[serde(skip)]
    rejected_hash: Option<String>,
    #[serde(skip)]
    tls_hash: u128,
    #[serde(skip)]
    pub history: VecDeque<Applied>,
}

/// What `GET /admin/config` shows about the keys file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeysStatus {
    pub file: String,
    pub hash: String,
    pub loaded_at: String,
    pub keys: usize,
    pub last_error: Option<Rejected>,
    /// True while the file on disk is a version that was refused (the keys in force are then
    /// older than the file).
    pub file_rejected: bool,
    #[serde(skip)]
    rejected_hash: Option<String>,
}

pub struct Reloader {
    path: PathBuf,
    state: Arc<ArcSwap<Snapshot>>,
    certs: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    /// The config the process started with: listeners, threads and the shadow store follow
    /// it until a restart.
    running: Config,
    status: Mutex<Status>,
    /// One reload at a time, whatever triggered it.
    busy: Mutex<()>,
    retire: crossbeam_channel::Sender<(Arc<Snapshot>, Vec<String>)>,
    /// Lays the rollout engine's weights over every config before it is built.
    rollouts: Arc<Rollouts>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn read_or_empty(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Hash of the certificate and key files' bytes. Taken before they are loaded: an edit in
/// between then makes one reload too many, never one too few.
pub fn tls_hash(config: &Config) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&read_or_empty(&config.tls_cert));
    h.update(&[0]);
    h.update(&read_or_empty(&config.tls_key));
    h.digest128()
}

/// Hash of what a config reload reads: the config text and the TLS files (the keys file
/// reloads on its own).
fn content_hash(source: &[u8], tls: u128) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source);
    h.update(&[0]);
    h.update(&tls.to_le_bytes());
    hash_hex(h.digest128())
}

fn bytes_hash(bytes: &[u8]) -> String {
    hash_hex(xxhash_rust::xxh3::xxh3_128(bytes))
}

/// How the status shows a hash: 32 hex digits.
fn hash_hex(hash: u128) -> String {
    format!("{hash:032x}")
}

impl Reloader {
    /// Takes charge of `state` (built from `running` at start) and the listener's
    /// certificate, loaded from files whose [`tls_hash`] was `tls` just before. Starts the
    /// thread that retires replaced snapshots.
    pub fn new(
        state: Arc<ArcSwap<Snapshot>>,
        certs: Arc<CertResolver>,
        tls: u128,
        metrics: Arc<Metrics>,
        rollouts: Arc<Rollouts>,
    ) -> Arc<Reloader> {
        let snap = state.load_full();
        let running = snap.config.clone();
        let hash = content_hash(running.source.as_bytes(), tls);
        let keys = KeysStatus {
            file: running.keys_file.display().to_string(),
            hash: hash_hex(snap.keys.source_hash()),
            loaded_at: now(),
            keys: snap.keys.len(),
            ..KeysStatus::default()
        };
        metrics.config_generation.set(1);
        metrics.config_loaded_at.set(unix_now());
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("config-retire".into())
            .spawn(move || retire::retire_loop(rx))
            .expect("spawning the retire thread");
        Arc::new(Reloader {
            path: running.file.clone(),
            state,
            certs,
            metrics,
            running,
            status: Mutex::new(Status {
                generation: 1,
                hash,
                loaded_at: now(),
                last_error: None,
                files_rejected: false,
                restart_required: Vec::new(),
                keys,
                rejected_hash: None,
                tls_hash: tls,
                history: VecDeque::new(),
            }),
            busy: Mutex::new(()),
            retire: tx,
            rollouts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files the watcher should follow: the config, the keys file, the certificate and key.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let c = &self.state.load().config;
        vec![
            self.path.clone(),
            c.keys_file.clone(),
            c.tls_cert.clone(),
            c.tls_key.clone(),
        ]
    }

    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    /// The snapshot in force with the status that describes it. Every reload swaps the
    /// snapshot while it holds the status lock, so the two read here under that lock belong
    /// together; read one after the other, a reload between them showed the new generation's
    /// number beside the previous generation's routes (`/admin/config`, caught by
    /// `proxy/tests/signals.rs::sighup_reloads_the_config` in a CI run).
    pub fn in_force(&self) -> (Arc<Snapshot>, Status) {
        let status = self.status.lock();
        (self.state.load_full(), status.clone())
    }

    /// True when `hash` is what is in force, or (for the watcher) what was last refused: the
    /// watcher may see one refused version more than once; it is refused and counted once.
    /// An operator asking again (SIGHUP, admin API) gets the errors again.
    fn unchanged(&self, hash: &str, trigger: Trigger) -> bool {
        let mut status = self.status.lock();
        if hash == status.hash {
            // Back to what is in force (say, a broken edit undone): nothing is pending.
            status.rejected_hash = None;
            status.files_rejected = false;
            if trigger != Trigger::File {
                tracing::info!(
                    ?trigger,
                    generation = status.generation,
                    "config unchanged: the files are what is in force"
                );
            }
            return true;
        }
        trigger == Trigger::File && status.rejected_hash.as_deref() == Some(hash)
    }

    pub fn rollouts(&self) -> &Arc<Rollouts> {
        &self.rollouts
    }

    /// Serves the weights the rollout engine holds now: the config in force with them laid
    /// over it, as a new generation (pools, limiters and shadow slots are all reused). Does
    /// nothing when no weight differs. Blocking, but quick: call it off the async threads.
    pub fn apply_rollouts(&self) {
        let _one_at_a_time = self.busy.lock();
        let current = self.state.load_full();
        let mut config = current.config.clone();
        self.rollouts.adopt(&mut config);
        let weight = |c: &Config, route: &str| {
            c.routes
                .get(route)
                .and_then(|r| r.canary.as_ref())
                .map(|c| c.weight)
        };
        if config
            .routes
            .keys()
            .all(|r| weight(&config, r) == weight(&current.config, r))
        {
            return;
        }
        match Snapshot::build_from(config, Some(&current)) {
            Ok(snap) => {
                let diff = Diff::between(&current, &snap, &self.running, false);
                // Swapped under the status lock: see [`Self::in_force`].
                let mut status = self.status.lock();
                let old = self.state.swap(Arc::new(snap));
                let _ = self.retire.send((old, Vec::new()));
                status.generation += 1;
                status.loaded_at = now();
                let applied = Applied {
                    generation: status.generation,
                    hash: status.hash.clone(),
                    at: status.loaded_at.clone(),
                    trigger: Trigger::Rollout,
                    diff,
                };
                status.history.push_front(applied.clone());
                status.history.truncate(HISTORY);
                self.metrics.config_generation.set(status.generation as i64);
                self.metrics.config_loaded_at.set(unix_now());
                tracing::info!(
                    generation = applied.generation,
                    "rollout applied: {}",
                    applied.diff
                );
            }
            Err(errors) => {
                // Only weights differ from a config that built: this is not expected.
                tracing::error!(
                    "rollout weights could not be applied: {}",
                    crate::config::format_errors(&errors)
                );
            }
        }
    }

    /// Runs the pipeline once. Blocking (models may load): call it off the async threads.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let _one_at_a_time = self.busy.lock();
        let current = self.state.load_full();
        let source = std::fs::read(&self.path);
        let bytes = source.as_deref().unwrap_or_default();
        // Hashed with the keys and certificate paths in force first: when nothing changed
        // (a touch, the watcher seeing a reload's own writes) nothing is parsed.
        let mut tls = tls_hash(&current.config);
        let mut hash = content_hash(bytes, tls);
        if self.unchanged(&hash, trigger) {
            return Outcome::Unchanged;
        }
        let text = match &source {
            Ok(bytes) => String::from_utf8(bytes.clone()).map_err(|_| "is not UTF-8 text".to_string()),
            Err(e) => Err(format!("cannot read: {e}")),
        };
        let in_force = config::KeysInForce {
            file: &current.config.keys_file,
            store: &current.keys,
        };
        let parsed = match text {
            Ok(t) => config::parse_with_keys(&self.path, &t, Some(in_force)),
            Err(message) => Err(vec![ConfigError {
                file: self.path.clone(),
                line: None,
                column: None,
                path: String::new(),
                message,
            }]),
        };
        // The new file may name other certificate files.
        if let Ok(c) = &parsed
            && (c.tls_cert != current.config.tls_cert || c.tls_key != current.config.tls_key)
        {
            tls = tls_hash(c);
            hash = content_hash(bytes, tls);
            if self.unchanged(&hash, trigger) {
                return Outcome::Unchanged;
            }
        }

        let tls_changed = tls != self.status.lock().tls_hash;
        let built = parsed.and_then(|mut config| {
            reloadable(&config)?;
            self.rollouts.adopt(&mut config);
            let cert = if tls_changed {
                Some(
                    tls::load_certified_key(&config.tls_cert, &config.tls_key).map_err(|e| {
                        let mut errors = Errors::new(&config.file, &config.source);
                        errors.add(&YamlPath::root().key("tls").key("cert"), e);
                        errors.list
                    })?,
                )
            } else {
                None
            };
            Snapshot::build_from(config, Some(&current)).map(|snap| (snap, cert))
        });

        match built {
            Ok((snap, cert)) => {
                let diff = Diff::between(&current, &snap, &self.running, cert.is_some());
                let retired = diff.pools_retired.clone();
                // Swapped under the status lock: see [`Self::in_force`].
                let mut status = self.status.lock();
                let old = self.state.swap(Arc::new(snap));
                if let Some(cert) = cert {
                    self.certs.set(cert);
                }
                // The old snapshot lives on in requests that started with it.
                let _ = self.retire.send((old, retired));
                status.generation += 1;
                status.hash = hash.clone();
                status.loaded_at = now();
                status.tls_hash = tls;
                status.rejected_hash = None;
                status.files_rejected = false;
                status.restart_required = diff.restart_required.clone();
                let in_force = self.state.load();
                let keys_file = in_force.config.keys_file.display().to_string();
                if status.keys.file != keys_file {
                    // Another keys file, loaded with this config: it is the one in force now
                    // (its hash that of the text its keys came from, see `KeyStore`).
                    status.keys = KeysStatus {
                        file: keys_file,
                        hash: hash_hex(in_force.keys.source_hash()),
                        loaded_at: now(),
                        keys: in_force.keys.len(),
                        ..KeysStatus::default()
                    };
                }
                let at = status.loaded_at.clone();
                let applied = self.record_applied(&mut status, hash, at, trigger, diff);
                tracing::info!(
                    file = %self.path.display(),
                    generation = applied.generation,
                    ?trigger,
                    "config reloaded: {}",
                    applied.diff
                );
                for r in &applied.diff.restart_required {
                    tracing::warn!(file = %self.path.display(), "not applied until restart: {r}");
                }
                Outcome::Applied(Box::new(applied))
            }
            Err(errors) => {
                let rejected = Rejected::new(trigger, hash.clone(), &errors);
                let mut status = self.status.lock();
                status.rejected_hash = Some(hash);
                status.files_rejected = true;
                status.last_error = Some(rejected.clone());
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                for e in &rejected.errors {
                    tracing::error!(
                        ?trigger,
                        generation = status.generation,
                        "config reload rejected, generation {} keeps serving: {e}",
                        status.generation
                    );
                }
                Outcome::Rejected(rejected)
            }
        }
    }
}

impl Reloader {
    /// Records a reload that took effect, whichever file it read: the history `GET
    /// /admin/config/diff` lists, and the metrics.
    fn record_applied(
        &self,
        status: &mut Status,
        hash: String,
        at: String,
        trigger: Trigger,
        diff: Diff,
    ) -> Applied {
        let applied = Applied {
            generation: status.generation,
            hash,
            at,
            trigger,
            diff,
        };
        status.history.push_front(applied.clone());
        status.history.truncate(HISTORY);
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        self.metrics.config_generation.set(status.generation as i64);
        self.metrics.config_loaded_at.set(unix_now());
        applied
    }

    /// Reloads the keys file alone, whatever the state of `routes.yaml` and the certificate:
    /// read → content hash (unchanged: nothing) → parse and check (every entry, tiers against
    /// the config in force) → the snapshot in force with the new keys, swapped. A file that
    /// fails is refused like a config file: logged with its place, counted in
    /// `gateway_config_reload_total{result="rejected"}`, shown on `/admin/config`; the keys in
    /// force stay.
    pub fn reload_keys(&self, trigger: Trigger) -> Outcome {
        let _one_at_a_time = self.busy.lock();
        let current = self.state.load_full();
        let file = current.config.keys_file.clone();
        let read = std::fs::read(&file);
        let hash = bytes_hash(read.as_deref().unwrap_or_default());
        {
            let mut status = self.status.lock();
            let keys = &mut status.keys;
            if hash == keys.hash {
                keys.rejected_hash = None;
                keys.file_rejected = false;
                return Outcome::Unchanged;
            }
            if trigger == Trigger::File && keys.rejected_hash.as_deref() == Some(hash.as_str()) {
                return Outcome::Unchanged;
            }
        }
        let loaded = match read {
            Err(e) => Err(vec![ConfigError {
                file: file.clone(),
                line: None,
                column: None,
                path: String::new(),
                message: format!("cannot read: {e} (the keys in force stay)"),
            }]),
            Ok(bytes) => String::from_utf8(bytes)
                .map_err(|_| {
                    vec![ConfigError {
                        file: file.clone(),
                        line: None,
                        column: None,
                        path: String::new(),
                        message: "is not UTF-8 text".into(),
                    }]
                })
                .and_then(|text| crate::config::keys::KeyStore::parse(&file, &text))
                .and_then(|store| {
                    let problems = store.unknown_tiers(&current.config.rate_limits);
                    if problems.is_empty() {
                        Ok(store)
                    } else {
                        Err(problems
                            .into_iter()
                            .map(|message| ConfigError {
                                file: file.clone(),
                                line: None,
                                column: None,
                                path: String::new(),
                                message,
                            })
                            .collect())
                    }
                }),
        };
        match loaded {
            Ok(store) => {
                let count = store.len();
                let snap = current.with_keys(store);
                let diff = Diff::between(&current, &snap, &self.running, false);
                // Swapped under the status lock: see [`Self::in_force`].
                let mut status = self.status.lock();
                let old = self.state.swap(Arc::new(snap));
                let _ = self.retire.send((old, Vec::new()));
                status.generation += 1;
                status.keys = KeysStatus {
                    file: file.display().to_string(),
                    hash: hash.clone(),
                    loaded_at: now(),
                    keys: count,
                    ..KeysStatus::default()
                };
                let at = status.keys.loaded_at.clone();
                let applied = self.record_applied(&mut status, hash, at, trigger, diff);
                tracing::info!(
                    file = %file.display(),
                    generation = applied.generation,
                    ?trigger,
                    "keys reloaded: {}",
                    applied.diff
                );
                Outcome::Applied(Box::new(applied))
            }
            Err(errors) => {
                let rejected = Rejected::new(trigger, hash.clone(), &errors);
                let mut status = self.status.lock();
                status.keys.rejected_hash = Some(hash);
                status.keys.file_rejected = true;
                status.keys.last_error = Some(rejected.clone());
                self.metrics.config_reloads.with_label_values(&["rejected"]).inc();
                for e in &rejected.errors {
                    tracing::error!(?trigger, "keys file rejected, the keys in force stay: {e}");
                }
                Outcome::Rejected(rejected)
            }
        }
    }
}

/// What a running gateway cannot do by itself that a first start may: make a development
/// certificate or key.
fn reloadable(config: &Config) -> Result<(), Vec<ConfigError>> {
    let mut errors = Errors::new(&config.file, &config.source);
    if config.keys.is_none() {
        errors.add(
            &YamlPath::root().key("auth").key("keys_file"),
            format!(
                "{} does not exist; a running gateway does not make keys (restore the file, or `gateway keys add`)",
                config.keys_file.display()
            ),
        );
    }
    if !config.tls_cert.exists() || !config.tls_key.exists() {
        errors.add(
            &YamlPath::root().key("tls"),
            format!(
                "{} or {} does not exist; development certificates are made only at start",
                config.tls_cert.display(),
                config.tls_key.display()
            ),
        );
    }
    if errors.list.is_empty() {
        Ok(())
    } else {
        Err(errors.list)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
