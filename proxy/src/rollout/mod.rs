//! Progressive rollouts run by the gateway itself, from `routes.yaml` alone.
//!
//! A route's canary may carry `rollout: {steps, interval, min_requests, gates, on_failure}`.
//! The engine serves the first step's weight, watches the step for `interval` (requests,
//! server errors and p99 latency of both variants, and the canary model's agreement with
//! stable on mirrored requests), then decides: every gate passes → next step; a gate fails →
//! weight 0 (`rollback`) or stay (`hold`); too few requests → wait and look again
//! (inconclusive). Reaching weight 100, or passing the last step, promotes the canary.
//!
//! **The operator stays in charge.** `gateway rollout pause|resume|promote|abort ROUTE`
//! (admin API) act at once. An edit of the route's `weight` in `routes.yaml` takes precedence:
//! the engine adopts the edited weight and pauses (`resume` continues from the first step at
//! or above it). The engine never writes `routes.yaml`; its state (step, weight, history)
//! lives in its own file (`server.rollout_state`), so a restart resumes where it was; one
//! process at a time runs the engine ([`state_file`]), so that the two processes of a graceful
//! upgrade never both move a weight.
//!
//! How a weight takes effect: the engine's weights are laid over the parsed config before a
//! snapshot is built ([`Rollouts::adopt`]), on every reload and whenever the engine moves
//! (`Reloader::apply_rollouts`), so a weight the engine set survives unrelated reloads.

pub mod gates;
pub mod state_file;
pub mod view;
pub mod window;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::Variant;
use crate::config::{Config, OnFailure, Rollout};
use crate::telemetry::metrics::Metrics;
pub use gates::{Verdict, evaluate};
pub use window::{Figures, Window};

/// Decisions kept per route (in the state file and on `/admin/rollouts`).
const HISTORY: usize = 100;

/// Monotonic time, so tests can drive the engine with a fake clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Watching the current step.
    Running,
    /// Stopped by the operator (`pause`) or by an edit of the weight in `routes.yaml`.
    Paused,
    /// A gate failed and `on_failure: hold` keeps the weight.
    Held,
    /// Done: the canary took the last step (or was promoted by hand).
    Promoted,
    /// A gate failed and `on_failure: rollback` set the weight to 0.
    RolledBack,
    /// Stopped by the operator at weight 0.
    Aborted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Held => "held",
            Status::Promoted => "promoted",
            Status::RolledBack => "rolled_back",
            Status::Aborted => "aborted",
        }
    }
}

/// One decision, with what it was made on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub at: String,
    /// pass, fail, inconclusive (gates); start, edit, pause, resume, promote, abort.
    pub result: String,
    pub weight_from: u8,
    pub weight_to: u8,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

/// A route's rollout, as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteState {
    /// The policy this state belongs to; another policy starts a new rollout.
    pub policy: String,
    pub steps: Vec<u8>,
    pub status: Status,
    /// Index into `steps` of the step being watched (or last reached).
    pub step: usize,
    /// The weight the engine serves.
    pub weight: u8,
    /// The weight `routes.yaml` said when last read: a different one is an operator's edit.
    pub file_weight: u8,
    /// Windows that ended without enough requests, in a row.
    pub inconclusive: u64,
    pub history: VecDeque<Decision>,
    #[serde(skip)]
    window_started: Duration,
}

/// What the request path reports into, per route under evaluation.
struct Slot {
    canary_pool: String,
    stable_version: String,
    window: ArcSwap<Window>,
}

/// What the operator can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl std::str::FromStr for Command {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause" => Ok(Command::Pause),
            "resume" => Ok(Command::Resume),
            "promote" => Ok(Command::Promote),
            "abort" => Ok(Command::Abort),
            _ => Err(format!("{s:?} is not one of: pause, resume, promote, abort")),
        }
    }
}

/// Why a command could not be carried out (the admin API's status).
#[derive(Debug)]
pub enum Refusal {
    NoRollout(String),
    Conflict(String),
}

pub struct Rollouts {
    file: Option<state_file::StateFile>,
    clock: Arc<dyn Clock>,
    /// Route → state, for every route whose canary has a rollout.
    routes: Mutex<BTreeMap<String, RouteState>>,
    /// Policies of the config in force.
    policies: Mutex<BTreeMap<String, Rollout>>,
    /// Routes being watched; read on every request (a miss when nothing runs).
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    any: AtomicBool,
    metrics: Arc<Metrics>,
}

fn now_text() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Rollouts {
    /// Loads the state file, if any. A file that cannot be read is set aside (renamed
    /// `*.unreadable`) with a warning: rollouts then start again from their first step.
    pub fn new(file: Option<PathBuf>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Arc<Rollouts> {
        let file = file.map(state_file::StateFile::new);
        let mut routes = BTreeMap::new();
        if let Some(mut loaded) = file.as_ref().and_then(state_file::StateFile::load) {
            let now = clock.now();
            for s in loaded.values_mut() {
                s.window_started = now;
            }
            tracing::info!(
                routes = loaded.len(),
                "rollout state loaded: rollouts resume where they were"
            );
            routes = loaded;
        }
        if file.as_ref().is_some_and(|f| !f.leads()) {
            tracing::info!(
                "another gateway process runs the rollout engine (an upgrade): this one serves its weights and takes over when it stops"
            );
        }
        Arc::new(Rollouts {
            file,
            clock,
            routes: Mutex::new(routes),
            policies: Mutex::new(BTreeMap::new()),
            slots: ArcSwap::from_pointee(HashMap::new()),
            any: AtomicBool::new(false),
            metrics,
        })
    }

    /// Whether this process runs the engine (always, without a state file).
    pub fn leads(&self) -> bool {
        self.file.as_ref().is_none_or(state_file::StateFile::leads)
    }

    /// Stops running the engine (the process is stopping): another may take over.
    pub fn resign(&self) {
        if let Some(f) = &self.file {
            f.resign();
        }
    }

    /// Becomes the engine if the process that ran it has stopped: reads the state it left
    /// (each route whose policy is the one in force), with fresh windows. True when it did.
    fn take_over(&self) -> bool {
        let Some(file) = &self.file else { return false };
        if !file.try_lead() {
            return false;
        }
        let now = self.clock.now();
        let mut routes = self.routes.lock();
        for (name, mut state) in file.load().unwrap_or_default() {
            if let Some(s) = routes.get_mut(&name)
                && s.policy == state.policy
            {
                state.window_started = now;
                *s = state;
            }
        }
        tracing::info!(file = %file.path().display(), "the rollout engine runs in this process now");
        true
    }

    /// Lays the engine's weights over a freshly parsed (or current) config, and takes note
    /// of the config: new rollouts start, changed policies restart, removed ones are
    /// forgotten, and an edited weight in the file pauses the route's rollout.
    pub fn adopt(&self, config: &mut Config) {
        let now = self.clock.now();
        let mut routes = self.routes.lock();
        let mut policies = BTreeMap::new();
        let mut changed = false;
        for (name, route) in config.routes.iter_mut() {
            let Some(canary) = route.canary.as_mut() else {
                continue;
            };
            let Some(policy) = canary.rollout.clone() else {
                continue;
            };
            // A rollout is of one stable pool, one canary pool and one policy: another of
            // any of them is another rollout.
            let fingerprint = format!("{} -> {}: {}", route.stable, canary.pool, policy.fingerprint());
            let file_weight = canary.configured_weight;
            match routes.get_mut(name) {
                Some(s) if s.policy == fingerprint => {
                    if file_weight != s.file_weight {
                        let before = s.weight;
                        s.file_weight = file_weight;
                        s.weight = file_weight;
                        if s.status == Status::Running {
                            s.status = Status::Paused;
                        }
                        push(
                            s,
                            "edit",
                            before,
                            format!(
                                "routes.yaml sets the weight to {file_weight}: it takes precedence; the rollout is paused (`gateway rollout resume {name}` continues from the first step at or above it)"
                            ),
                            None,
                        );
                        tracing::warn!(route = %name, from = before, to = file_weight, "rollout paused: the weight was edited in the config, which takes precedence");
                        changed = true;
                    }
                    canary.weight = s.weight;
                }
                previous => {
                    let reason = if previous.is_some() {
                        "the rollout policy changed: starting again from the first step"
                    } else {
                        "rollout defined: starting at the first step"
                    };
                    let mut s = RouteState {
                        policy: fingerprint,
                        steps: policy.steps.clone(),
                        status: Status::Running,
                        step: 0,
                        weight: policy.steps[0],
                        file_weight,
                        inconclusive: 0,
                        history: previous.map(|p| p.history.clone()).unwrap_or_default(),
                        window_started: now,
                    };
                    push(&mut s, "start", file_weight, reason.to_string(), None);
                    tracing::info!(route = %name, steps = ?policy.steps, interval = ?policy.interval, "{reason}");
                    canary.weight = s.weight;
                    routes.insert(name.clone(), s);
                    changed = true;
                }
            }
            policies.insert(name.clone(), policy);
        }
        let before = routes.len();
        routes.retain(|name, _| policies.contains_key(name));
        changed |= routes.len() != before;
        // Slots for the routes being watched, keeping windows already open.
        let old = self.slots.load();
        let mut slots = HashMap::new();
        for (name, s) in routes.iter() {
            if s.status != Status::Running {
                continue;
            }
            let route = &config.routes[name];
            let canary_pool = route.canary.as_ref().map(|c| c.pool.clone()).unwrap_or_default();
            let stable_version = config.pools[&route.stable].version().to_string();
            let slot = match old.get(name) {
                Some(o) if o.canary_pool == canary_pool && o.stable_version == stable_version => o.clone(),
                _ => Arc::new(Slot {
                    canary_pool,
                    stable_version,
                    window: ArcSwap::from_pointee(Window::default()),
                }),
            };
            slots.insert(name.clone(), slot);
        }
        self.any.store(!slots.is_empty(), Ordering::Relaxed);
        self.slots.store(Arc::new(slots));
        for (name, s) in routes.iter() {
            self.metrics
                .rollout_step
                .with_label_values(&[name])
                .set(s.step as i64 + 1);
        }
        *self.policies.lock() = policies;
        if changed {
            self.persist(&routes);
        }
    }

    /// A request a route answered (cheap when no rollout runs).
    pub fn observe(&self, route: &str, variant: Variant, status: u16, latency: Duration) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        if let Some(slot) = self.slots.load().get(route) {
            slot.window.load().request(variant, status, latency);
        }
    }

    /// Feedback labels joined with a prediction of `variant` (not chosen by the client).
    pub fn observe_labels(&self, route: &str, variant: Variant, correct: u64, labelled: u64) {
        if self.any.load(Ordering::Relaxed)
            && let Some(slot) = self.slots.load().get(route)
        {
            slot.window.load().labels(variant, correct, labelled);
        }
    }

    /// The latest input drift of a route's canary traffic (`None`: unavailable).
    pub fn observe_drift(&self, route: &str, psi: Option<f64>) {
        if self.any.load(Ordering::Relaxed)
            && let Some(slot) = self.slots.load().get(route)
        {
            slot.window.load().drift(psi);
        }
    }

    /// A mirrored comparison: counts when stable answered and the shadow is the canary's pool.
    pub fn observe_comparison(&self, route: &str, shadow_pool: &str, primary_version: &str, agrees: bool) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        if let Some(slot) = self.slots.load().get(route)
            && slot.canary_pool == shadow_pool
            && slot.stable_version == primary_version
        {
            slot.window.load().comparison(agrees);
        }
    }

    /// Evaluates every running rollout whose window is over. True when a weight changed
    /// (the caller then applies the weights: `Reloader::apply_rollouts`).
    pub fn tick(&self) -> bool {
        if !self.leads() {
            // The weights may have moved while the other process ran the engine.
            return self.take_over();
        }
        let now = self.clock.now();
        let policies = self.policies.lock().clone();
        let slots = self.slots.load_full();
        let mut routes = self.routes.lock();
        let mut moved = false;
        let mut touched = false;
        for (name, s) in routes.iter_mut() {
            let (Some(policy), Some(slot)) = (policies.get(name), slots.get(name)) else {
                continue;
            };
            if s.status != Status::Running || now.saturating_sub(s.window_started) < policy.interval {
                continue;
            }
            let figures = slot.window.load().figures();
            let verdict = evaluate(policy, &figures);
            let before = s.weight;
            let result = match &verdict {
                Verdict::Pass(_) => "pass",
                Verdict::Fail(_) => "fail",
                Verdict::Inconclusive(_) => "inconclusive",
            };
            self.metrics
                .rollout_decisions
                .with_label_values(&[name, result])
                .inc();
            match verdict {
                Verdict::Inconclusive(why) => {
                    // Keep the window open: it accumulates until it has enough.
                    s.inconclusive += 1;
                    tracing::info!(route = %name, weight = s.weight, "rollout waits: {why}");
                    if s.inconclusive == 1 || s.inconclusive.is_power_of_two() {
                        push(s, "inconclusive", before, why, Some(figures));
                        touched = true;
                    }
                    // Look again one interval later.
                    s.window_started = now;
                    continue;
                }
                Verdict::Pass(why) => {
                    let last = s.steps.len() - 1;
                    if s.step < last {
                        s.step += 1;
                        s.weight = s.steps[s.step];
                    }
                    if s.weight == 100 || s.step == last && before == s.weight {
                        s.status = Status::Promoted;
                    }
                    let what = if s.status == Status::Promoted {
                        format!("promoted at weight {}", s.weight)
                    } else {
                        format!("next step: weight {}", s.weight)
                    };
                    tracing::info!(route = %name, from = before, to = s.weight, "rollout gates pass: {why}; {what}");
                    push(s, "pass", before, format!("{why}; {what}"), Some(figures));
                }
                Verdict::Fail(why) => {
                    let what = match policy.on_failure {
                        OnFailure::Rollback => {
                            s.status = Status::RolledBack;
                            s.weight = 0;
                            "rolled back to weight 0".to_string()
                        }
                        OnFailure::Hold => {
                            s.status = Status::Held;
                            format!("held at weight {}", s.weight)
                        }
                    };
                    tracing::warn!(route = %name, from = before, to = s.weight, "rollout gate failed: {why}; {what}");
                    push(s, "fail", before, format!("{why}; {what}"), Some(figures));
                }
            }
            s.inconclusive = 0;
            s.window_started = now;
            slot.window.store(Arc::new(Window::default()));
            self.metrics
                .rollout_step
                .with_label_values(&[name])
                .set(s.step as i64 + 1);
            moved |= s.weight != before;
            touched = true;
        }
        if touched {
            self.persist(&routes);
        }
        drop(routes);
        if touched {
            self.refresh_slots();
        }
        moved
    }

    /// Drops the slots of routes that stopped running.
    fn refresh_slots(&self) {
        let routes = self.routes.lock();
        let slots: HashMap<String, Arc<Slot>> = self
            .slots
            .load()
            .iter()
            .filter(|(name, _)| routes.get(*name).is_some_and(|s| s.status == Status::Running))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.any.store(!slots.is_empty(), Ordering::Relaxed);
        self.slots.store(Arc::new(slots));
    }

    /// Carries out an operator's command. The caller applies the weights and, for `resume`,
    /// the next reload re-opens the route's window.
    pub fn command(&self, route: &str, command: Command) -> Result<RouteState, Refusal> {
        if !self.leads() {
            return Err(Refusal::Conflict(
                "another gateway process runs the rollout engine (an upgrade is under way): ask again in a few seconds".into(),
            ));
        }
        let now = self.clock.now();
        let mut routes = self.routes.lock();
        let Some(s) = routes.get_mut(route) else {
            let known: Vec<String> = routes.keys().cloned().collect();
            return Err(Refusal::NoRollout(format!(
                "route {route:?} has no rollout (routes with one: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        };
        let before = s.weight;
        let (result, reason) = match (command, s.status) {
            (Command::Pause, Status::Running) => {
                s.status = Status::Paused;
                ("pause", format!("paused by the operator at weight {}", s.weight))
            }
            (Command::Pause, other) => {
                return Err(Refusal::Conflict(format!(
                    "the rollout is {}, not running",
                    other.as_str()
                )));
            }
            (Command::Resume, Status::Running) => {
                return Err(Refusal::Conflict("the rollout is already running".into()));
            }
            (Command::Resume, Status::RolledBack | Status::Aborted) => {
                s.step = 0;
                s.weight = s.steps[0];
                s.status = Status::Running;
                (
                    "resume",
                    format!("started again from the first step: weight {}", s.weight),
                )
            }
            (Command::Resume, _) => {
                // From the first step at or above the weight in force.
                s.step = s
                    .steps
                    .iter()
                    .position(|w| *w >= s.weight)
                    .unwrap_or(s.steps.len() - 1);
                s.weight = s.steps[s.step];
                s.status = Status::Running;
                ("resume", format!("resumed at weight {}", s.weight))
            }
            (Command::Promote, _) => {
                s.step = s.steps.len() - 1;
                s.weight = 100;
                s.status = Status::Promoted;
                ("promote", "promoted by the operator: weight 100".to_string())
            }
            (Command::Abort, _) => {
                s.weight = 0;
                s.status = Status::Aborted;
                ("abort", "aborted by the operator: weight 0".to_string())
            }
        };
        s.window_started = now;
        s.inconclusive = 0;
        tracing::info!(route, from = before, to = s.weight, "rollout {result}: {reason}");
        push(s, result, before, reason, None);
        self.metrics
            .rollout_decisions
            .with_label_values(&[route, result])
            .inc();
        self.metrics
            .rollout_step
            .with_label_values(&[route])
            .set(s.step as i64 + 1);
        let state = s.clone();
        self.persist(&routes);
        Ok(state)
    }

    /// The state of one route (tests, CLI).
    pub fn state(&self, route: &str) -> Option<RouteState> {
        self.routes.lock().get(route).cloned()
    }

    /// Writes the state file (when this process runs the engine).
    fn persist(&self, routes: &BTreeMap<String, RouteState>) {
        if let Some(f) = &self.file {
            f.write(routes);
        }
    }
}

fn push(s: &mut RouteState, result: &str, from: u8, reason: String, figures: Option<Figures>) {
    s.history.push_back(Decision {
        at: now_text(),
        result: result.to_string(),
        weight_from: from,
        weight_to: s.weight,
        reason,
        figures,
    });
    while s.history.len() > HISTORY {
        s.history.pop_front();
    }
}

#[cfg(test)]
mod tests;
