//! Whether a model is *right*, beside whether two models agree (shadows): input drift per
//! route variant against the model version's training profile, live accuracy from feedback
//! labels joined with the predictions they belong to, and the A/B verdict between canary and
//! stable. `docs/quality.md` explains each figure for model owners.
//!
//! The request path only records: a sampled request's input rows and predicted classes go
//! into its variant's fixed-size window ([`drift::Window`]; a few hundred nanoseconds,
//! measured by `loadtests/bench_quality.sh`), and each prediction's join record goes to the
//! feedback store ([`store`]). Everything else (binning, PSI, decoding remote requests'
//! bodies, Redis writes) runs off the request path: [`Quality::compute`] from the upkeep
//! loop, the Redis writer on a thread of its own.
//!
//! - [`profile`]: a model version's reference profile (`profile.json`)
//! - [`drift`]: windows and the population stability index
//! - [`store`]: predictions waiting for labels (local, or Redis for fleets)
//! - [`feedback`]: the feedback body and what became of each item
//! - [`accuracy`]: tallies, intervals and the verdict
//! - [`view`]: the summary as text for a terminal

pub mod accuracy;
pub mod drift;
pub mod feedback;
pub mod profile;
pub mod store;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use inference::{NamedTensor, TensorData};
use parking_lot::{Mutex, RwLock};

use crate::config::Variant;
use crate::config::quality::{DriftSettings, FeedbackSettings};
use crate::telemetry::metrics::Metrics;
use accuracy::Tally;
use drift::Window;
use feedback::{Item, Outcome};
use profile::Profile;
use store::{Found, Served, ShadowServed, Write};

/// Wall-clock time (feedback TTLs span replicas, so not a monotonic clock); tests move a
/// fake one.
pub trait WallClock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct FakeWallClock(pub AtomicU64);

impl WallClock for FakeWallClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Predictions with more rows are not kept for feedback (a bulk batch would fill the store
/// alone; its labels get "unknown").
pub const MAX_FEEDBACK_ROWS: usize = 1024;

/// Redis writes waiting for the writer, at most; beyond, dropped and counted
/// (`gateway_quality_dropped_total`).
const QUEUE: usize = 4096;
/// Remote requests' bodies waiting to be decoded into their windows, at most: each interval
/// decodes no more than this (a window's worth), so the work per interval stays small
/// whatever the rate; beyond, the sample is skipped and counted.
const BODIES: usize = 1024;
/// ... and at most this many bytes of them: the bodies are the requests' own (shared, not
/// copied), but a queued one outlives its request, and 1024 maximal bodies would hold
/// gigabytes.
const BODY_BYTES: usize = 16 << 20;

enum Store {
    Local(store::Local),
    Redis(ArcSwapOption<store::Redis>),
}

/// One join's outcome for the caller (the rollout windows count labels of unforced answers).
pub struct Joined {
    pub served: Served,
    pub correct: usize,
}

type WindowKey = (String, Variant);
/// (route, who predicted: "stable" or "canary", model version); for shadow pairs,
/// (route, shadow pool, shadow version).
type TallyKey = (String, String, String);

pub struct Quality {
    metrics: Arc<Metrics>,
    clock: Arc<dyn WallClock>,
    feedback: FeedbackSettings,
    store: Store,
    writes: crossbeam_queue::ArrayQueue<Write>,
    bodies: crossbeam_queue::ArrayQueue<(Arc<Window>, Bytes, Option<String>)>,
    body_bytes: AtomicUsize,
    windows: RwLock<HashMap<WindowKey, Arc<Window>>>,
    tallies: Mutex<BTreeMap<TallyKey, Tally>>,
    /// Per (route, shadow pool, shadow version): the shadow's tally and the primary's on the
    /// same labelled requests.
    paired: Mutex<BTreeMap<TallyKey, (Tally, Tally)>>,
    /// The last figures of each window, and the class PSI between canary and stable.
    figures: RwLock<BTreeMap<WindowKey, drift::Figures>>,
    between: RwLock<BTreeMap<String, f64>>,
    /// The Redis store's connection and writer.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Quality {
    pub fn new(
        feedback: &FeedbackSettings,
        metrics: Arc<Metrics>,
        clock: Arc<dyn WallClock>,
    ) -> Arc<Quality> {
        let (store, runtime) = match &feedback.redis {
            None => (
                Store::Local(store::Local::new(feedback.max_bytes, feedback.ttl)),
                None,
            ),
            Some(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("quality")
                    .enable_all()
                    .build()
                    .expect("a one-thread runtime starts");
                (Store::Redis(ArcSwapOption::empty()), Some(rt))
            }
        };
        let q = Arc::new(Quality {
            metrics,
            clock,
            feedback: feedback.clone(),
            store,
            writes: crossbeam_queue::ArrayQueue::new(QUEUE),
            bodies: crossbeam_queue::ArrayQueue::new(BODIES),
            body_bytes: AtomicUsize::new(0),
            windows: RwLock::default(),
            tallies: Mutex::default(),
            paired: Mutex::default(),
            figures: RwLock::default(),
            between: RwLock::default(),
            runtime,
        });
        if let (Some(rt), Some(r)) = (&q.runtime, &feedback.redis) {
            let this = q.clone();
            let r = r.clone();
            rt.spawn(async move { this.redis_writer(r).await });
        }
        q
    }

    /// Connects (again, after a failure) and sends queued writes in order.
    async fn redis_writer(self: Arc<Self>, r: crate::config::quality::FeedbackRedis) {
        let Store::Redis(slot) = &self.store else { return };
        let mut idle = Duration::from_millis(1);
        loop {
            if slot.load().is_none() {
                match store::Redis::connect(&r.url, &r.prefix, r.timeout, self.feedback.ttl).await {
                    Ok(c) => {
                        tracing::info!(redis = %crate::config::redact_url(&r.url), "feedback store: connected to Redis");
                        slot.store(Some(Arc::new(c)));
                    }
                    Err(e) => {
                        tracing::warn!(redis = %crate::config::redact_url(&r.url), error = %e, "feedback store: cannot reach Redis; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let conn = slot.load_full().expect("connected above");
            let mut any = false;
            while let Some(w) = self.writes.pop() {
                any = true;
                match conn.write(w).await {
                    Ok(Some((served, shadow, labels))) => self.count_shadow(&served, &shadow, &labels),
                    Ok(None) => {}
                    Err(e) => {
                        self.metrics
                            .quality
                            .dropped
                            .with_label_values(&["store_error"])
                            .inc();
                        tracing::debug!("feedback store write failed: {e}");
                    }
                }
            }
            idle = if any {
                Duration::from_millis(1)
            } else {
                (idle * 2).min(Duration::from_millis(20))
            };
            tokio::time::sleep(idle).await;
        }
    }

    /// The time predictions are stamped with (feedback TTLs are judged on the same clock).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn feedback_enabled(&self) -> bool {
        self.feedback.enabled
    }

    /// The window of a route variant, made (or made again, for another model version or
    /// capacity) on first use.
    pub fn window(
        &self,
        route: &str,
        variant: Variant,
        version: &str,
        profile: Option<&Arc<Profile>>,
        capacity: usize,
    ) -> Arc<Window> {
        let fits = |w: &Window| {
            w.version == version
                && w.capacity() == capacity
                && w.profile.as_ref().map(Arc::as_ptr) == profile.map(Arc::as_ptr)
        };
        {
            let windows = self.windows.read();
            // The key is found without allocating: routes are few, so scan them.
            if let Some((_, w)) = windows.iter().find(|((r, v), _)| r == route && *v == variant)
                && fits(w)
            {
                return w.clone();
            }
        }
        let width = profile.map_or(1, |p| p.features.len());
        let w = Arc::new(Window::new(
            version.to_string(),
            profile.cloned(),
            width,
            capacity,
        ));
        self.windows
            .write()
            .insert((route.to_string(), variant), w.clone());
        w
    }

    /// A sampled request's decoded inputs (the profile's first input, if numeric).
    pub fn record_inputs(&self, window: &Window, inputs: &[NamedTensor]) {
        if window.profile.is_none() {
            return;
        }
        let Some(t) = inputs.first() else { return };
        if t.tensor.row_len() != window.width() {
            return;
        }
        match t.tensor.data() {
            TensorData::F32(v) => window.record_rows(v),
            TensorData::F64(v) => window.record_rows(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
            _ => {}
        }
    }

    /// [`Self::record_inputs`] from the first input's rows kept as `f32` (a request body
    /// answered from the cache: `crate::cache::Answered`).
    pub fn record_rows(&self, window: &Window, row_len: usize, rows: &[f32]) {
        if window.profile.is_some() && row_len == window.width() {
            window.record_rows(rows);
        }
    }

    /// The first input's rows as [`Self::record_rows`] takes them (`f32` and `f64` inputs).
    pub fn rows_of(inputs: &[NamedTensor]) -> Option<(usize, Vec<f32>)> {
        let t = inputs.first()?;
        let rows = match t.tensor.data() {
            TensorData::F32(v) => v.clone(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            _ => return None,
        };
        Some((t.tensor.row_len(), rows))
    }

    /// A sampled request to a remote pool: its body is decoded off the request path.
    pub fn record_body(&self, window: Arc<Window>, body: Bytes, header_length: Option<String>) {
        if window.profile.is_none() {
            return;
        }
        let len = body.len();
        let held = self.body_bytes.fetch_add(len, Relaxed);
        if held + len > BODY_BYTES || self.bodies.push((window, body, header_length)).is_err() {
            self.body_bytes.fetch_sub(len, Relaxed);
            self.metrics
                .quality
                .dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    /// What feedback will need to join this prediction.
    pub fn served(&self, request_id: &str, served: Served) {
        if !self.feedback.enabled {
            return;
        }
        match &self.store {
            Store::Local(s) => s.put(request_id, served),
            Store::Redis(_) => self.queue(Write::Put(request_id.to_string(), served)),
        }
    }

    /// A shadow's classes for a request (joined at once if its labels came already).
    pub fn shadow_served(&self, request_id: &str, shadow: ShadowServed) {
        if !self.feedback.enabled {
            return;
        }
        match &self.store {
            Store::Local(s) => {
                if let Some((served, labels, shadow)) = s.add_shadow(request_id, shadow) {
                    self.count_shadow(&served, &shadow, &labels);
                }
            }
            Store::Redis(_) => self.queue(Write::Shadow(request_id.to_string(), shadow)),
        }
    }

    fn queue(&self, w: Write) {
        if self.writes.push(w).is_err() {
            self.metrics
                .quality
                .dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }

    /// Joins feedback items for `model` from `tenant`. Each outcome pairs with its item;
    /// joins are counted here (tallies, metrics) and returned for the rollout windows.
    pub async fn join(&self, tenant: &str, model: &str, items: &[Item]) -> (Vec<Outcome>, Vec<Joined>) {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut joined = Vec::new();
        for item in items {
            let outcome = match self.join_one(tenant, model, item).await {
                Ok(j) => {
                    let o = Outcome::Joined {
                        rows: item.labels.len(),
                        correct: j.correct,
                    };
                    joined.push(j);
                    o
                }
                Err(o) => o,
            };
            self.metrics
                .quality
                .feedback
                .with_label_values(&[outcome.result()])
                .inc();
            outcomes.push(outcome);
        }
        if let Store::Local(s) = &self.store {
            self.metrics.quality.store_bytes.set(s.bytes() as i64);
        }
        (outcomes, joined)
    }

    async fn join_one(&self, tenant: &str, model: &str, item: &Item) -> Result<Joined, Outcome> {
        if !inference::protocol::request_id::usable_request_id(&item.request_id) {
            return Err(Outcome::BadId);
        }
        let id = item.request_id.as_str();
        let found = match &self.store {
            Store::Local(s) => s.lookup(id),
            Store::Redis(slot) => {
                let conn = slot
                    .load_full()
                    .ok_or_else(|| Outcome::Unavailable("not connected".into()))?;
                conn.lookup(id).await.map_err(Outcome::Unavailable)?
            }
        };
        let served = match found {
            Found::Open(s) => s,
            Found::Unknown => return Err(Outcome::Unknown),
            Found::Duplicate => return Err(Outcome::Duplicate),
            Found::Ambiguous => return Err(Outcome::Ambiguous),
        };
        if served.tenant != tenant {
            return Err(Outcome::OtherTenant);
        }
        if served.route != model {
            return Err(Outcome::OtherModel(served.route));
        }
        if served.classes.len() != item.labels.len() {
            return Err(Outcome::Rows {
                labels: item.labels.len(),
                rows: served.classes.len(),
            });
        }
        let age_ms = self.clock.now_ms().saturating_sub(served.at_ms);
        let ttl = self.feedback.ttl;
        if age_ms > ttl.as_millis() as u64 {
            return Err(Outcome::Expired {
                age_s: age_ms / 1000,
                ttl_s: ttl.as_secs(),
            });
        }
        let shadows = match &self.store {
            Store::Local(s) => s.mark(id, &item.labels),
            Store::Redis(slot) => {
                let conn = slot
                    .load_full()
                    .ok_or_else(|| Outcome::Unavailable("not connected".into()))?;
                conn.mark(id, &item.labels).await.map_err(Outcome::Unavailable)?
            }
        };
        // Someone else marked it between the lookup and now.
        let shadows = shadows.ok_or(Outcome::Duplicate)?;
        let correct = self.count(&served, &item.labels);
        for shadow in &shadows {
            self.count_shadow(&served, shadow, &item.labels);
        }
        Ok(Joined { served, correct })
    }

    /// Counts the primary's labelled rows; returns how many it got right.
    fn count(&self, served: &Served, labels: &[i64]) -> usize {
        let now_s = self.clock.now_ms() / 1000;
        let key = (
            served.route.clone(),
            served.variant.clone(),
            served.version.clone(),
        );
        let mut tallies = self.tallies.lock();
        let t = tallies.entry(key).or_default();
        let mut correct = 0;
        for (label, predicted) in labels.iter().zip(&served.classes) {
            t.add(*label, *predicted, now_s);
            correct += usize::from(label == predicted);
        }
        let m = &self.metrics.quality;
        let lv = [
            served.route.as_str(),
            served.variant.as_str(),
            served.version.as_str(),
        ];
        let wrong = labels.len() - correct;
        m.feedback_labels
            .with_label_values(&[lv[0], lv[1], lv[2], "correct"])
            .inc_by(correct as u64);
        m.feedback_labels
            .with_label_values(&[lv[0], lv[1], lv[2], "incorrect"])
            .inc_by(wrong as u64);
        if let Some(a) = t.accuracy() {
            m.accuracy.with_label_values(&lv).set(a);
        }
        correct
    }

    /// Counts a shadow's prediction of a labelled request, and the primary's on the same rows.
    fn count_shadow(&self, served: &Served, shadow: &ShadowServed, labels: &[i64]) {
        if shadow.classes.len() != labels.len() {
            return;
        }
        let now_s = self.clock.now_ms() / 1000;
        let key = (served.route.clone(), shadow.pool.clone(), shadow.version.clone());
        let mut paired = self.paired.lock();
        let (s, p) = paired.entry(key).or_default();
        let mut correct = 0;
        for ((label, by_shadow), by_primary) in labels.iter().zip(&shadow.classes).zip(&served.classes) {
            s.add(*label, *by_shadow, now_s);
            p.add(*label, *by_primary, now_s);
            correct += usize::from(label == by_shadow);
        }
        let m = &self.metrics.quality;
        let lv = [served.route.as_str(), "shadow", shadow.version.as_str()];
        m.feedback_labels
            .with_label_values(&[lv[0], lv[1], lv[2], "correct"])
            .inc_by(correct as u64);
        m.feedback_labels
            .with_label_values(&[lv[0], lv[1], lv[2], "incorrect"])
            .inc_by((labels.len() - correct) as u64);
        if let Some(a) = s.accuracy() {
            m.accuracy.with_label_values(&lv).set(a);
        }
    }

    /// Off the request path, every `drift.interval`: decodes queued remote bodies into their
    /// windows, computes each window's figures, and sets the drift gauges. Windows of
    /// routes no longer configured (`keep` says which are) go.
    pub fn compute(&self, settings: &DriftSettings, keep: impl Fn(&str, Variant) -> bool) {
        while let Some((window, body, header_length)) = self.bodies.pop() {
            self.body_bytes.fetch_sub(body.len(), Relaxed);
            if let Ok(r) = inference::protocol::decode_request(&body, header_length.as_deref()) {
                self.record_inputs(&window, &r.inputs);
            }
        }
        self.windows.write().retain(|(r, v), _| keep(r, *v));
        let windows: Vec<(WindowKey, Arc<Window>)> = self
            .windows
            .read()
            .iter()
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        let mut figures = BTreeMap::new();
        let m = &self.metrics.quality;
        for ((route, variant), w) in windows {
            let f = w.figures(settings.min_rows, settings.threshold);
            let lv = [route.as_str(), variant.as_str()];
            match f.input_psi {
                Some(psi) => m.input_drift_psi.with_label_values(&lv).set(psi),
                None => {
                    let _ = m.input_drift_psi.remove_label_values(&lv);
                }
            }
            match f.prediction_psi {
                Some(psi) => m.prediction_drift_psi.with_label_values(&lv).set(psi),
                None => {
                    let _ = m.prediction_drift_psi.remove_label_values(&lv);
                }
            }
            figures.insert((route, variant), f);
        }
        // The predicted classes of canary against stable's, per route, over their windows.
        let mut between = BTreeMap::new();
        for ((route, variant), f) in &figures {
            if *variant != Variant::Canary || f.predictions < settings.min_rows {
                continue;
            }
            if let Some(s) = figures.get(&(route.clone(), Variant::Stable))
                && s.predictions >= settings.min_rows
            {
                let stable = s.class_shares.clone();
                let share = |c: i64| stable.iter().find(|(k, _)| *k == c).map_or(0.0, |(_, x)| *x);
                let known: Vec<i64> = stable.iter().map(|(c, _)| *c).collect();
                between.insert(route.clone(), drift::class_psi(&f.class_shares, share, &known));
            }
        }
        *self.figures.write() = figures;
        *self.between.write() = between;
        if let Store::Local(s) = &self.store {
            m.store_bytes.set(s.bytes() as i64);
        }
    }

    /// The last drift figures of a route variant.
    pub fn drift(&self, route: &str, variant: Variant) -> Option<drift::Figures> {
        self.figures.read().get(&(route.to_string(), variant)).cloned()
    }

    /// Everything the admin API and the report show: drift per window, accuracy per
    /// (route, predictor, version), the shadows' accuracy beside the primary's on the same
    /// requests, and per route the canary-vs-stable verdict. `outcomes(route, variant,
    /// version)` gives (requests, 5xx answers) from the request metrics.
    pub fn summary(&self, outcomes: impl Fn(&str, &str, &str) -> (u64, u64)) -> serde_json::Value {
        use serde_json::json;
        let figures = self.figures.read().clone();
        let between = self.between.read().clone();
        let tallies = self.tallies.lock().clone();
        let paired = self.paired.lock().clone();
        let mut routes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let route_names: std::collections::BTreeSet<String> = figures
            .keys()
            .map(|(r, _)| r.clone())
            .chain(tallies.keys().map(|(r, _, _)| r.clone()))
            .chain(paired.keys().map(|(r, _, _)| r.clone()))
            .collect();
        for route in route_names {
            let drift: BTreeMap<&str, &drift::Figures> = figures
                .iter()
                .filter(|((r, _), _)| *r == route)
                .map(|((_, v), f)| (v.as_str(), f))
                .collect();
            let accuracy: Vec<serde_json::Value> = tallies
                .iter()
                .filter(|((r, _, _), _)| *r == route)
                .map(|((_, by, version), t)| tally_json(by, version, t))
                .collect();
            let shadows: Vec<serde_json::Value> = paired
                .iter()
                .filter(|((r, _, _), _)| *r == route)
                .map(|((_, pool, version), (s, p))| {
                    json!({
                        "shadow": pool,
                        "version": version,
                        "shadow_accuracy": tally_json(&format!("shadow:{pool}"), version, s),
                        "primary_on_same_requests": tally_json("primary", "", p),
                    })
                })
                .collect();
            // The current versions of stable and canary: the latest tallies with labels.
            let latest = |v: &str| {
                tallies
                    .iter()
                    .filter(|((r, by, _), _)| *r == route && by == v)
                    .max_by_key(|(_, t)| t.history.back().map(|h| h.0))
                    .map(|((_, _, version), t)| (version.clone(), t.clone()))
            };
            let verdict = match (latest("canary"), latest("stable")) {
                (Some((cv, c)), Some((sv, s))) => {
                    let acc = accuracy::compare(
                        "accuracy",
                        (c.correct, c.labelled),
                        (s.correct, s.labelled),
                        true,
                        accuracy::VERDICT_MIN_LABELS,
                    );
                    let (cn, c5) = outcomes(&route, "canary", &cv);
                    let (sn, s5) = outcomes(&route, "stable", &sv);
                    let errors = accuracy::compare(
                        "5xx rate",
                        (c5, cn),
                        (s5, sn),
                        false,
                        accuracy::VERDICT_MIN_LABELS,
                    );
                    json!({"canary_version": cv, "stable_version": sv, "accuracy": acc, "errors": errors})
                }
                _ => {
                    json!({"accuracy": {"verdict": "not enough data", "text": "accuracy: no labelled predictions of both canary and stable yet"}})
                }
            };
            routes.insert(
                route.clone(),
                json!({
                    "drift": drift,
                    "predicted_classes_canary_vs_stable_psi": between.get(&route),
                    "accuracy": accuracy,
                    "shadows": shadows,
                    "verdict": verdict,
                }),
            );
        }
        json!({ "routes": routes })
    }
}

fn tally_json(by: &str, version: &str, t: &Tally) -> serde_json::Value {
    let interval = t.interval();
    serde_json::json!({
        "predicted_by": by,
        "version": version,
        "labelled": t.labelled,
        "correct": t.correct,
        "accuracy": t.accuracy(),
        "interval95": interval.map(|(lo, hi)| [lo, hi]),
        "confusion": serde_json::to_value(t).ok().and_then(|v| v.get("confusion").cloned()),
        "history": t.history,
    })
}

#[cfg(test)]
mod tests;
