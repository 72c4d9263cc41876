//! Shadow traffic: copies of a route's requests sent to other model versions, compared with
//! what the primary answered, and kept for model owners' reports.
//!
//! The client path only decides which shadows get a copy ([`Mirror::pick`]: sampling, the
//! body-size cap, the CPU the process can spare ([`admission`]), and a per-route in-flight
//! cap taken without waiting) and hands a [`Job`]
//! to a spawned task after its own answer is written ([`Mirror::spawn`]). Nothing from a
//! shadow reaches the client: its status, body, errors and latency stay in the task. A copy
//! that cannot be made at once is dropped and counted, never queued.
//!
//! Shadow tasks run on a runtime of their own ([`ShadowRuntime`]) whose thread runs at idle
//! priority ([`inference::priority::idle`]), with a connection pool of its own: when the machine is busy, the
//! client path gets the CPU first, and a shadow's connections never mix with the primary's.
//! Jobs reach it through a lock-free queue that it polls every millisecond or so while there
//! is work: handing one over costs the client path no system call and no thread wake-up.
//!
//! - [`admission`]: copies only while the process has CPU to spare
//! - [`aggregate`]: a minute's exact figures for one pair
//! - [`breaker`]: a shadow that keeps failing gets a rest, not every request
//! - [`compare`]: one pair's comparison
//! - `local`: copies to shadow-only local pools, run in batches without a task: on the I/O
//!   thread in its quiet turns, or on the shadow runtime's thread
//! - [`store`]: SQLite, written in batches by one thread
//! - [`report`], [`html`], [`quality_html`]: what model owners read

pub mod admission;
pub mod aggregate;
pub mod breaker;
pub mod compare;
pub mod html;
mod local;
pub use local::client_request_seen;
pub mod quality_html;
pub mod record;
pub mod report;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use inference::NamedTensor;
use inference::protocol;
use inference::protocol::grpc as codec;
use pingora::connectors::TransportConnector;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Route;
use crate::pools::remote;
use crate::routing::snapshot::{Backend, Snapshot};
use crate::telemetry::metrics::Metrics;
use record::{DropReason, Pair, PairKey, Pairs, Record};
use store::{Event, Recorder};

/// What the request looked like, in whichever form the client path already had it.
pub enum Input {
    /// Decoded inputs (local pools decode them anyway).
    Tensors(Vec<NamedTensor>),
    /// An Open Inference Protocol body not decoded on the client path (remote primaries);
    /// the shadow task decodes it.
    Oip {
        body: Bytes,
        header_length: Option<String>,
    },
}

/// What the primary answered.
pub enum Primary {
    Outputs(Vec<NamedTensor>),
    /// A remote pool's answer, decoded by the shadow task.
    Oip {
        status: u16,
        body: Bytes,
        header_length: Option<String>,
    },
    Failed(String),
}

/// A request's body as it came, with its binary header's length.
type Raw = (Bytes, Option<String>);

impl Input {
    /// The inputs, decoded here if the client path did not; with the undecoded body, which
    /// remote shadows get unchanged.
    fn decode(self) -> (Result<Vec<NamedTensor>, String>, Option<Raw>) {
        match self {
            Input::Tensors(t) => (Ok(t), None),
            Input::Oip { body, header_length } => (
                protocol::decode_request(&body, header_length.as_deref())
                    .map(|r| r.inputs)
                    .map_err(|e| e.to_string()),
                Some((body, header_length)),
            ),
        }
    }
}

impl Primary {
    /// The primary's outputs, decoded here if the client path did not, or why there are none.
    fn decode(self) -> Result<Arc<Vec<NamedTensor>>, String> {
        match self {
            Primary::Outputs(o) => Ok(Arc::new(o)),
            Primary::Oip {
                status: 200,
                body,
                header_length,
            } => protocol::decode_response(&body, header_length.as_deref())
                .map(|r| Arc::new(r.outputs))
                .map_err(|e| format!("unreadable answer: {e}")),
            Primary::Oip { status, body, .. } => Err(format!("status {status}: {}", snippet(&body))),
            Primary::Failed(e) => Err(e),
        }
    }
}

/// One request to mirror.
pub struct Job {
    pub request_id: String,
    pub input: Input,
    pub primary: Primary,
    pub primary_latency: Duration,
    /// The client chose the variant that answered: its comparisons do not feed rollout gates.
    pub forced: bool,
}

/// A shadow that gets a copy, holding its in-flight slot.
pub struct Pick {
    pair: Arc<Pair>,
    _slot: OwnedSemaphorePermit,
}

/// The runtime shadow tasks run on: one worker thread at idle priority.
pub struct ShadowRuntime(tokio::runtime::Runtime);

impl ShadowRuntime {
    pub fn start() -> Result<ShadowRuntime, String> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shadow")
            .on_thread_start(inference::priority::idle)
            .enable_all()
            .build()
            .map(ShadowRuntime)
            .map_err(|e| format!("cannot start the shadow runtime: {e}"))
    }

    /// Gives shadow tasks still running up to `grace` to finish, then stops.
    pub fn shutdown(self, grace: Duration) {
        self.0.shutdown_timeout(grace);
    }
}

type Queued = (Arc<Snapshot>, Vec<Pick>, Job);

/// The gateway's shadow machinery; cheap to clone into tasks (one reference count).
#[derive(Clone)]
pub struct Mirror(Arc<Inner>);

struct Inner {
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Shadows' own upstream connections (see the module comment).
    connector: Arc<TransportConnector>,
    /// Jobs waiting for the dispatcher: at most `shadow.max_queued`, counted in `queued`
    /// (taken before a push, given back after a pop, so the bound holds exactly).
    queue: crossbeam_queue::SegQueue<Queued>,
    queued: AtomicUsize,
    breakers: breaker::Breakers,
    /// A rollout's agreement gate reads the comparisons of the canary's pool as a shadow.
    rollouts: Arc<crate::rollout::Rollouts>,
    /// Each shadow's classes wait with the request's record for its feedback labels.
    quality: Arc<crate::quality::Quality>,
    budget: admission::CpuBudget,
    /// Cores the process may use.
    cores: usize,
    /// Copies dropped since the dispatcher last told the store, per pair and reason: one
    /// event per pair and reason per tick instead of one per copy, so that a flood of drops
    /// cannot crowd the store's queue.
    drops: parking_lot::Mutex<hashbrown::HashMap<Dropped, u64, foldhash::fast::RandomState>>,
    /// Drops that found `drops` locked by the dispatcher: the client path never waits for a
    /// lock an idle-priority thread holds (one preempted there would stall the primary).
    drops_contended: crossbeam_queue::ArrayQueue<Dropped>,
    pairs: Pairs,
}

/// A pair's copies dropped for one reason, counted by the pair's identity (its address: no
/// string hashed per drop). A pair made again after [`Pairs`] started over counts apart, and
/// the store adds both to the same minute.
struct Dropped(Arc<Pair>, DropReason);

impl PartialEq for Dropped {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) && self.1 == other.1
    }
}

impl Eq for Dropped {}

impl std::hash::Hash for Dropped {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
        self.1.hash(state);
    }
}

/// Drops waiting in [`Inner::drops_contended`], at most (the dispatcher holds the lock for
/// a moment per tick, so a few at a time; beyond, the record is lost and counted).
const CONTENDED: usize = 1024;

impl Mirror {
    /// Starts taking jobs on `runtime`.
    pub fn new(
        recorder: Recorder,
        metrics: Arc<Metrics>,
        runtime: &ShadowRuntime,
        rollouts: Arc<crate::rollout::Rollouts>,
        quality: Arc<crate::quality::Quality>,
    ) -> Mirror {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mirror = Mirror(Arc::new(Inner {
            recorder,
            metrics,
            connector: Arc::new(TransportConnector::new(None)),
            queue: crossbeam_queue::SegQueue::new(),
            queued: Default::default(),
            breakers: breaker::Breakers::default(),
            rollouts,
            quality,
            budget: admission::CpuBudget::new(cores),
            cores,
            drops: Default::default(),
            drops_contended: crossbeam_queue::ArrayQueue::new(CONTENDED),
            pairs: Pairs::default(),
        }));
        let dispatcher = mirror.clone();
        runtime.0.spawn(async move { dispatcher.dispatch().await });
        mirror
    }

    /// Runs queued copies to shadow-only local pools itself (`local`) and moves the others
    /// onto tasks: every millisecond while there is work, backing off to 20 ms when there is
    /// none; and refills the copies' CPU budget every window.
    async fn dispatch(self) {
        let mut idle = Duration::from_millis(1);
        let mut refilled = Instant::now();
        loop {
            tokio::time::sleep(idle).await;
            self.report_drops();
            if refilled.elapsed() >= admission::WINDOW {
                refilled = Instant::now();
                // All shadow tasks run on this runtime's one thread: its CPU is theirs.
                let s = self.0.budget.refill(inference::priority::thread_cpu());
                self.0.metrics.shadow_copy_cpu.set(s.per_copy.as_secs_f64());
                self.0.metrics.foreground_cpu.set(s.foreground);
                // A counter as well: over a run, its increase per compared copy is the mean
                // cost of a copy, where the gauge is one moment's smoothed estimate.
                self.0.metrics.shadow_cpu.inc_by(s.shadow.as_secs_f64());
            }
            let mut any = false;
            let mut here = Vec::new();
            while let Some(queued) = self.0.queue.pop() {
                self.0.queued.fetch_sub(1, Ordering::AcqRel);
                any = true;
                match Mirror::way(queued) {
                    local::Way::Here(copy) => here.push(copy),
                    local::Way::Task((snap, picks, job)) => {
                        let this = self.clone();
                        tokio::spawn(async move { this.run(snap, picks, job).await });
                    }
                }
            }
            if !here.is_empty() {
                self.run_here(here);
            }
            idle = if any {
                Duration::from_millis(1)
            } else {
                (idle * 2).min(Duration::from_millis(20))
            };
        }
    }

    /// The shadows this request is copied to. Never waits: a shadow whose route is at its
    /// in-flight cap, or a body over the size cap, is dropped and counted.
    pub fn pick(&self, snap: &Snapshot, route: &Route, primary_version: &str, body_len: usize) -> Vec<Pick> {
        let mut picks = Vec::new();
        if route.shadows.is_empty() {
            return picks;
        }
        let settings = &snap.config.shadow;
        let now = Instant::now();
        for s in &route.shadows {
            if s.percent < 100 && rand::random_range(0..100u8) >= s.percent {
                continue;
            }
            let mut version = itoa::Buffer::new();
            let shadow_version = version.format(snap.config.pools[&s.pool].version());
            let pair = self
                .0
                .pairs
                .get(&route.model, primary_version, &s.pool, shadow_version);
            if body_len > settings.max_body_bytes {
                self.dropped(&pair, DropReason::BodyTooLarge);
                continue;
            }
            if !self.0.breakers.allow(&s.pool, now) {
                self.dropped(&pair, DropReason::ShadowFailing);
                continue;
            }
            // The budget, or failing it an I/O thread that keeps up with its copies
            // (admission.rs): only for a lone shadow-only local pool (the copies such a
            // thread runs) and only with no cap below the whole machine.
            let keeping_up = || {
                settings.max_cpu_percent >= 100
                    && route.shadows.len() == 1
                    && local::shadow_only_local(snap, &s.pool)
                    && local::drainer_keeps_up(now)
            };
            if !self.0.budget.admit(settings.max_cpu_percent) && !keeping_up() {
                self.dropped(&pair, DropReason::NoSpareCpu);
                continue;
            }
            let slots = snap
                .shadow_slots
                .get(&route.model)
                .expect("a semaphore per route");
            match slots.clone().try_acquire_owned() {
                Ok(slot) => picks.push(Pick { pair, _slot: slot }),
                Err(_) => self.dropped(&pair, DropReason::InFlightCap),
            }
        }
        picks
    }

    fn dropped(&self, pair: &Arc<Pair>, reason: DropReason) {
        pair.dropped(&self.0.metrics, reason);
        match self.0.drops.try_lock() {
            Some(mut drops) => *drops.entry(Dropped(pair.clone(), reason)).or_default() += 1,
            None => {
                if self
                    .0
                    .drops_contended
                    .push(Dropped(pair.clone(), reason))
                    .is_err()
                {
                    self.0.metrics.shadow_records_lost.inc();
                }
            }
        }
    }

    /// Hands the drops counted since the last call to the store.
    fn report_drops(&self) {
        let mut drops = std::mem::take(&mut *self.0.drops.lock());
        while let Some(d) = self.0.drops_contended.pop() {
            *drops.entry(d).or_default() += 1;
        }
        for (Dropped(pair, reason), count) in drops {
            let (key, reason) = (PairKey::clone(&pair.key), reason.as_str());
            if !self.0.recorder.send(Event::Dropped { key, reason, count }) {
                self.0.metrics.shadow_records_lost.inc();
            }
        }
    }

    /// Queues the shadows of one request for the shadow runtime, or for this I/O thread
    /// ([`Mirror::on_io_thread`]); returns at once.
    pub fn spawn(&self, snap: Arc<Snapshot>, picks: Vec<Pick>, job: Job) {
        if picks.is_empty() {
            return;
        }
        let max = snap.config.shadow.max_queued;
        let Some(queued) = self.on_io_thread((snap, picks, job)) else {
            return;
        };
        if self.0.queued.fetch_add(1, Ordering::AcqRel) >= max {
            self.0.queued.fetch_sub(1, Ordering::AcqRel);
            for pick in queued.1 {
                self.dropped(&pick.pair, DropReason::QueueFull);
            }
            return;
        }
        self.0.queue.push(queued);
    }

    async fn run(self, snap: Arc<Snapshot>, picks: Vec<Pick>, job: Job) {
        let Job {
            request_id,
            input,
            primary,
            primary_latency,
            forced,
        } = job;
        // The original body, passed unchanged to remote shadows when there is one.
        let (inputs, raw) = input.decode();
        let inputs = match inputs {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::debug!(request_id, "not mirrored: the request does not decode: {e}");
                return;
            }
        };
        let primary = primary.decode();
        let timeout = snap.config.shadow.timeout;
        let shadow_one = |pick: Pick| {
            let (this, snap, inputs, primary, raw, request_id) = (
                self.clone(),
                snap.clone(),
                inputs.clone(),
                primary.clone(),
                raw.clone(),
                request_id.clone(),
            );
            async move {
                let started = Instant::now();
                let call = this.call(&snap, &pick.pair.key.shadow, &inputs, raw, &request_id);
                let shadow = match tokio::time::timeout(timeout, call).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
                };
                let shadow_latency = started.elapsed();
                this.record(
                    pick,
                    request_id,
                    inputs,
                    primary,
                    shadow,
                    primary_latency,
                    shadow_latency,
                    forced,
                );
            }
        };
        // One shadow (the usual case) runs on this task; several run side by side.
        let mut picks = picks;
        if picks.len() == 1 {
            shadow_one(picks.pop().expect("one pick")).await;
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for pick in picks {
            tasks.spawn(shadow_one(pick));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Asks one shadow pool.
    async fn call(
        &self,
        snap: &Snapshot,
        pool: &str,
        inputs: &Arc<Vec<NamedTensor>>,
        raw: Option<Raw>,
        request_id: &str,
    ) -> Result<Vec<NamedTensor>, String> {
        match snap.pools.get(pool) {
            None => Err(format!("pool {pool} is gone")),
            Some(Backend::Local(p)) => {
                let outputs = p
                    .infer_queued(inputs.as_ref().clone())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(named(p, outputs))
            }
            Some(Backend::Remote(p)) if p.is_grpc() => {
                let spec = &p.spec;
                let request =
                    codec::encode_request(&spec.model, &spec.version.to_string(), request_id, inputs);
                let max_answer = snap.config.limits.max_answer_bytes;
                let (answer, _) = remote::infer_grpc(p, &request, request_id, None, max_answer)
                    .await
                    .map_err(|e| e.to_string())?;
                codec::decode_response(answer).map_err(|e| format!("unreadable answer: {e}"))
            }
            Some(Backend::Remote(p)) => {
                let (body, header_length) =
                    raw.unwrap_or_else(|| (Bytes::from(protocol::encode_request(request_id, inputs)), None));
                let path = p.upstream_path("/infer");
                let out = remote::Outbound {
                    method: "POST",
                    path: &path,
                    body,
                    request_id,
                    content_type: Some(if header_length.is_some() {
                        "application/octet-stream"
                    } else {
                        "application/json"
                    }),
                    header_length: header_length.as_deref(),
                    max_response_bytes: snap.config.limits.max_answer_bytes,
                };
                let answer = remote::forward(p, &self.0.connector, &out)
                    .await
                    .map_err(|e| e.to_string())?;
                if answer.status != 200 {
                    return Err(format!("status {}: {}", answer.status, snippet(&answer.body)));
                }
                protocol::decode_response(&answer.body, answer.header_length.as_deref())
                    .map(|r| r.outputs)
                    .map_err(|e| format!("unreadable answer: {e}"))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        pick: Pick,
        request_id: String,
        inputs: Arc<Vec<NamedTensor>>,
        primary: Result<Arc<Vec<NamedTensor>>, String>,
        shadow: Result<Vec<NamedTensor>, String>,
        primary_latency: Duration,
        shadow_latency: Duration,
        forced: bool,
    ) {
        let Pick { pair, _slot } = pick;
        let key = &pair.key;
        self.0.budget.done();
        self.0
            .breakers
            .report(&key.shadow, shadow.is_ok(), Instant::now());
        let m = &self.0.metrics;
        pair.copied(m, shadow.is_ok(), shadow_latency);
        let comparison = match (&primary, &shadow) {
            (Ok(p), Ok(s)) => Some(compare::compare(p, s)),
            _ => None,
        };
        if let Some(c) = &comparison {
            if !forced {
                self.0
                    .rollouts
                    .observe_comparison(&key.route, &key.shadow, &key.primary_version, c.agrees());
            }
            pair.compared(m, c.agrees(), &c.row_max_delta);
        }
        if let Ok(outputs) = &shadow
            && self.0.quality.feedback_enabled()
            && let Some(classes) = crate::predictions::classes(outputs)
        {
            self.0.quality.shadow_served(
                &request_id,
                crate::quality::store::ShadowServed {
                    pool: key.shadow.clone(),
                    version: key.shadow_version.clone(),
                    classes,
                },
            );
        }
        if let Err(e) = &shadow {
            m.shadow_errors
                .with_label_values(&[&key.route, &key.shadow])
                .inc();
            tracing::debug!(request_id, shadow = %key.shadow, "shadow failed: {e}");
        }
        let record = Record {
            at: SystemTime::now(),
            key: key.clone(),
            request_id,
            inputs: Some(inputs),
            primary,
            shadow,
            comparison,
            primary_latency,
            shadow_latency: Some(shadow_latency),
        };
        if !self.0.recorder.record(record) {
            m.shadow_records_lost.inc();
        }
    }
}

/// A local pool's outputs under their names.
fn named(pool: &inference::Pool, outputs: Vec<inference::Tensor>) -> Vec<NamedTensor> {
    let specs = &pool.metadata().outputs;
    let name = |(spec, tensor): (&inference::TensorSpec, _)| NamedTensor {
        name: spec.name.clone(),
        tensor,
    };
    specs.iter().zip(outputs).map(name).collect()
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}
