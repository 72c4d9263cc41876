//! A pool serves one model version: a bounded queue in front of a few worker threads, each
//! owning an ORT session, each stacking whatever requests are waiting into one ORT run.
//!
//! Why this shape:
//! - Workers are plain OS threads, not async tasks: `session.run` blocks for as long as the
//!   model takes, and a blocked async runtime stops all network I/O with it.
//! - The queue is bounded (`queue_capacity` requests). When it is full the request is refused
//!   at once with [`InferError::Overloaded`] (503 + `Retry-After`): memory stays bounded and
//!   callers learn about overload immediately instead of timing out.
//! - Dynamic batching: a worker that picks up a request takes every request already waiting,
//!   up to `max_batch` rows, and runs them as one ORT call. Small models spend most of a call
//!   in fixed overhead, so one call of 32 rows costs little more than one call of 1 row.
//!   Only requests of the same pool meet in a batch, so models never mix.
//! - Adaptive batching (the default, [`Batching::Adaptive`]): a worker waits for more
//!   requests (at most `max_delay`) only while another worker of the pool is running a
//!   batch. A lone request that finds the pool idle runs at once: waiting would delay it and
//!   gain nothing, since requests that arrive while it runs queue up and make the next batch
//!   by themselves (the spirit of Triton's and MLServer's adaptive batching). Under load the
//!   batches grow with the queue, so the batched throughput stays. [`Batching::Fixed`] always
//!   waits `max_delay` for company, as the pool did before.
//! - With adaptive batching, requests run on the caller's thread ([`Pool::infer`]) when the
//!   pool is idle (nothing queued, no batch running), each has at most [`INLINE_ROWS`] rows,
//!   and the model runs such a request in under `inline_max` (measured,
//!   [`PoolStats::solo_run_ns`]). The first such request lets its thread's other ready work
//!   go first; requests that arrive meanwhile (the rest of a burst the I/O driver read at
//!   once) join it, and it runs them all as batches. Handing them to a worker would cost two
//!   thread wake-ups per batch for nothing: at a moderate rate, where each request arrives
//!   nearly alone, that hand-over cost the gateway more CPU than the model; at 23,000
//!   requests/s on one core the gateway spent 33 µs per request with lone requests inline
//!   and bursts on the worker, 29 µs with bursts gathered (one-off, docs/performance.md).
//!   Under load the worker batches what queues while a batch runs, as before. Callers at
//!   idle priority (shadow copies, [`Pool::infer_queued`]) never run inline: a worker of the
//!   pool must never wait for them; nor does fixed batching, which promises to wait for
//!   company.
//! - Failures are sorted out per request ([`crate::engine`]): one bad request fails alone.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::batch;
use crate::engine::{Answer, Answers, Engine, Job, deliver, warm_up_inputs};
pub use crate::engine::{BATCH_BUCKETS, INLINE_ROWS, NOT_TIMED, PoolStats, UNHEALTHY_AFTER};
use crate::error::InferError;
use crate::model::{self, CheckedInputs, LoadError, ModelMetadata, NamedTensor};
pub use crate::runner::{OrtRunner, Runner};
use crate::tensor::Tensor;

/// How a pool runs. The defaults suit small CPU models such as the bundled ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads, each with its own ORT session.
    pub instances: usize,
    /// Most rows stacked into one ORT run. 1 turns batching off.
    pub max_batch: usize,
    /// Longest a worker holds a batch open waiting for more requests. This is the latency a
    /// lone request pays at low load; 250 µs is a few times one small-model run.
    pub max_delay: Duration,
    /// Requests waiting for a worker before new ones are refused with 503.
    pub queue_capacity: usize,
    /// ORT intra-op threads per session (1: the graph runs on the worker thread itself).
    pub intra_threads: usize,
    /// Refuse NaN and infinity in float inputs (400) instead of passing them to the model.
    pub reject_non_finite: bool,
    /// Run the worker threads at idle priority ([`crate::priority::idle`]): a gateway does
    /// this for pools that only serve shadow copies, so that they never take the CPU from
    /// the client path.
    pub idle_priority: bool,
    /// Most rows one request may carry (413 above): a bound on how long one request can hold
    /// a worker, and on its outputs' size.
    pub max_rows: usize,
    /// When a worker waits for more requests before it runs a batch.
    pub batching: Batching,
    /// A lone request runs on the caller's thread when the model runs one in under this
    /// (see the module comment); zero turns it off. It bounds how long one model run holds
    /// a connection's thread: 100 µs is about eight times what a lone breast-cancer/1
    /// request costs in its pool (11.9 µs, `loadtests/bench_inference.sh`, pool alone).
    pub inline_max: Duration,
}

/// When a worker holds a batch open for more requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Batching {
    /// Only while another worker of the pool is running a batch (at most `max_delay`);
    /// otherwise it runs what is waiting at once.
    #[default]
    Adaptive,
    /// Always `max_delay` when fewer than `max_batch` rows are waiting.
    Fixed,
}

impl std::str::FromStr for Batching {
    type Err = String;
    fn from_str(s: &str) -> Result<Batching, String> {
        match s {
            "adaptive" => Ok(Batching::Adaptive),
            "fixed" => Ok(Batching::Fixed),
            _ => Err(format!("batching is adaptive or fixed, not {s:?}")),
        }
    }
}

/// Rows per request by default: one request of 4,096 rows of the bundled MLP runs in a few
/// milliseconds, and its answer stays under a megabyte of JSON.
pub const DEFAULT_MAX_ROWS: usize = 4096;

/// [`PoolConfig::inline_max`] by default.
pub const DEFAULT_INLINE_MAX: Duration = Duration::from_micros(100);

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            instances: 1,
            max_batch: 32,
            max_delay: Duration::from_micros(250),
            queue_capacity: 1024,
            intra_threads: 1,
            reject_non_finite: true,
            idle_priority: false,
            max_rows: DEFAULT_MAX_ROWS,
            batching: Batching::Adaptive,
            inline_max: DEFAULT_INLINE_MAX,
        }
    }
}

impl PoolConfig {
    /// Every field must be usable; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.instances == 0 {
            errors.push("instances must be at least 1");
        }
        if self.max_batch == 0 {
            errors.push("max_batch must be at least 1");
        }
        if self.queue_capacity == 0 {
            errors.push("queue_capacity must be at least 1");
        }
        if self.intra_threads == 0 {
            errors.push("intra_threads must be at least 1");
        }
        if self.max_rows == 0 {
            errors.push("max_rows must be at least 1");
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// A snapshot of [`PoolStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub rows: u64,
    pub batches: u64,
    pub rejected: u64,
    pub failed: u64,
    pub input_failures: u64,
    pub abandoned: u64,
    pub inline: u64,
    pub batch_sizes: [u64; BATCH_BUCKETS.len() + 1],
    pub consecutive_failures: u64,
    /// [`PoolStats::solo_run_ns`].
    pub solo_run_ns: u64,
}

/// A model version being served. Dropping the pool lets the workers finish every queued
/// request, then joins them.
pub struct Pool {
    meta: Arc<ModelMetadata>,
    config: PoolConfig,
    label: String,
    tx: Option<Sender<Job>>,
    stats: Arc<PoolStats>,
    /// One per instance: its worker locks it for each batch; a lone request may lock an
    /// idle one to run inline.
    engines: Vec<Arc<Mutex<Engine>>>,
    /// The pool's batches running now (on workers or inline).
    running: Arc<AtomicUsize>,
    /// Requests waiting on their callers' threads for the first of them to run them all
    /// (see [`Pool::infer`]).
    gathered: Mutex<Vec<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Loads `path` into `config.instances` ORT sessions and starts their workers.
    pub fn load(name: &str, version: &str, path: &Path, config: PoolConfig) -> Result<Pool, LoadError> {
        let fail = |reason: String| LoadError {
            model: format!("{name}/{version}"),
            path: path.to_path_buf(),
            reason,
        };
        config.validate().map_err(fail)?;
        let mut meta = None;
        let mut runners: Vec<Box<dyn Runner>> = Vec::with_capacity(config.instances);
        for _ in 0..config.instances {
            let session = model::open_session(path, config.intra_threads).map_err(fail)?;
            if meta.is_none() {
                meta = Some(model::metadata_from_session(&session, name, version).map_err(fail)?);
            }
            runners.push(Box::new(OrtRunner::new(session)));
        }
        let meta = meta.expect("instances >= 1 was validated");
        Ok(Pool::with_runners(meta, config, runners))
    }

    /// A pool over any runners: one worker thread per runner.
    pub fn with_runners(meta: ModelMetadata, config: PoolConfig, runners: Vec<Box<dyn Runner>>) -> Pool {
        let meta = Arc::new(meta);
        let label = format!("{}/{}", meta.name, meta.version);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(config.queue_capacity.max(1));
        let stats = Arc::new(PoolStats::default());
        let running = Arc::new(AtomicUsize::new(0));
        let engines: Vec<_> = runners
            .into_iter()
            .map(|runner| {
                let engine = Engine::new(runner, meta.clone(), stats.clone(), running.clone());
                Arc::new(Mutex::new(engine))
            })
            .collect();
        let workers = engines
            .iter()
            .enumerate()
            .map(|(i, engine)| {
                let idle = config.idle_priority;
                let worker = Worker {
                    rx: rx.clone(),
                    engine: engine.clone(),
                    batchable: meta.batchable,
                    max_batch: config.max_batch.max(1),
                    max_delay: config.max_delay,
                    batching: config.batching,
                    running: running.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("infer-{label}-{i}"))
                    .spawn(move || {
                        if idle {
                            crate::priority::idle();
                        }
                        worker.run(idle)
                    })
                    .expect("spawning an inference worker thread")
            })
            .collect();
        Pool {
            meta,
            config,
            label,
            tx: Some(tx),
            stats,
            engines,
            running,
            gathered: Mutex::new(Vec::new()),
            workers,
        }
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// False after [`UNHEALTHY_AFTER`] failed batches in a row, until a batch (a client's,
    /// or a [`Pool::warm`] probe) succeeds: what readiness reports for a model that loaded but
    /// fails when it runs.
    pub fn healthy(&self) -> bool {
        self.stats.consecutive_failures.load(Ordering::Relaxed) < UNHEALTHY_AFTER
    }

    /// Requests waiting for a worker right now.
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            rows: s.rows.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            input_failures: s.input_failures.load(Ordering::Relaxed),
            abandoned: s.abandoned.load(Ordering::Relaxed),
            inline: s.inline.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| s.batch_sizes[i].load(Ordering::Relaxed)),
            consecutive_failures: s.consecutive_failures.load(Ordering::Relaxed),
            solo_run_ns: s.solo_run_ns.load(Ordering::Relaxed),
        }
    }

    /// Runs one request of zeros (every dynamic dimension 1) and waits for it, so that a
    /// model that loads but cannot run is caught before it serves, and the first client does
    /// not pay ONNX Runtime's first-run cost. Blocks the calling thread (never call it on an
    /// async worker); safe inside or outside a runtime.
    pub fn warm(&self, timeout: Duration) -> Result<(), String> {
        let checked = self
            .meta
            .check_inputs(warm_up_inputs(&self.meta)?, false)
            .map_err(|e| e.to_string())?;
        let mut rx = self.submit(checked).map_err(|e| e.to_string())?;
        // Polled rather than `blocking_recv`, which panics when called inside a runtime.
        let deadline = Instant::now() + timeout;
        loop {
            match rx.try_recv() {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(format!("warm-up inference failed: {e}")),
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err("the worker stopped during the warm-up inference".into());
                }
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= deadline => {
                    return Err(format!("the warm-up inference took over {timeout:?}"));
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Checks and answers one request: on this thread when the pool is idle, the request is
    /// small and the model fast (see the module comment), otherwise queued for a worker and
    /// awaited. Outputs come back in the model's output order.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<Tensor>, InferError> {
        let checked = self.checked(inputs)?;
        if !self.may_inline(&checked) {
            return self.queued(checked).await;
        }
        let CheckedInputs { tensors, rows } = checked;
        let (reply, rx) = oneshot::channel();
        let leads = {
            let mut gathered = self.gathered.lock().unwrap_or_else(|e| e.into_inner());
            gathered.push(Job {
                inputs: tensors,
                rows,
                reply: Some(reply),
            });
            gathered.len() == 1
        };
        if leads {
            // The other requests of a burst (read in the same poll of the I/O driver) join
            // the gathered ones meanwhile: tokio runs a yielded task after its driver's next
            // poll. Then this task runs them all as batches, and each caller finds its answer.
            let lead = Lead {
                pool: self,
                here: false,
            };
            tokio::task::yield_now().await;
            lead.run_here();
        }
        rx.await.map_err(|_| {
            InferError::Internal(format!("the worker for {} stopped before answering", self.label))
        })?
    }

    /// [`Pool::infer`] that never runs on the caller's thread: for callers at idle priority
    /// (shadow copies), which a worker must never wait for, and which batch for throughput.
    pub async fn infer_queued(&self, inputs: Vec<NamedTensor>) -> Result<Vec<Tensor>, InferError> {
        let checked = self.checked(inputs)?;
        self.queued(checked).await
    }

    /// Runs requests on the caller's thread, as batches of requests whose inputs stack (at
    /// most `max_batch` rows each), and answers them in their order. For a caller that may
    /// block and whose pool no client waits for: the shadow runtime's thread, running copies
    /// for a pool that only serves shadows (idle priority). It waits for an engine if the
    /// pool's worker holds them all. Handing the copies to that worker instead cost a wake-up
    /// of the worker and one of the caller per batch, on a core the client path shares.
    pub fn run_here(&self, requests: Vec<Vec<NamedTensor>>) -> Vec<Answer> {
        match self.run_here_if(requests, true) {
            Ok(answers) => answers,
            Err(_) => unreachable!("a caller that waits gets an engine"),
        }
    }

    /// [`Pool::run_here`] for a caller that must not block (an event loop's thread): gives the
    /// requests back when no engine is idle. The run's cost is measured in elapsed time, not
    /// on the thread's CPU clock: such a thread does nothing else until the run ends, and a
    /// read of that clock is a system call (with the I/O thread's own two reads per slice of
    /// copies, 2.4% of its samples at 35,000 requests/s: `perf`, a one-off, docs/performance.md).
    pub fn try_run_here(
        &self,
        requests: Vec<Vec<NamedTensor>>,
    ) -> Result<Vec<Answer>, Vec<Vec<NamedTensor>>> {
        self.run_here_if(requests, false)
    }

    fn run_here_if(
        &self,
        requests: Vec<Vec<NamedTensor>>,
        wait: bool,
    ) -> Result<Vec<Answer>, Vec<Vec<NamedTensor>>> {
        let mut engine = match self.engines.iter().find_map(|e| e.try_lock().ok()) {
            Some(engine) => engine,
            None if wait => self.engines[0].lock().unwrap_or_else(|e| e.into_inner()),
            None => return Err(requests),
        };
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(requests.len());
        let mut waiting = Vec::with_capacity(requests.len());
        let mut jobs = Vec::with_capacity(requests.len());
        for (i, inputs) in requests.into_iter().enumerate() {
            match self.checked(inputs) {
                Ok(CheckedInputs { tensors, rows }) => {
                    let (reply, rx) = oneshot::channel();
                    waiting.push((i, rx));
                    jobs.push(Job {
                        inputs: tensors,
                        rows,
                        reply: Some(reply),
                    });
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        if !jobs.is_empty() {
            let count = jobs.len() as u64;
            let (cpu, wall) = (wait.then(crate::priority::thread_cpu), Instant::now());
            let answers = self.run_batches(&mut engine, jobs);
            drop(engine);
            let spent = match cpu {
                Some(cpu) => crate::priority::thread_cpu().saturating_sub(cpu),
                None => wall.elapsed(),
            };
            crate::engine::smooth(&self.stats.here_run_ns, spent.as_nanos() as u64 / count);
            deliver(answers);
        }
        for (i, mut rx) in waiting {
            let lost = || InferError::Internal(format!("{} did not answer", self.label));
            answers[i] = Some(rx.try_recv().unwrap_or_else(|_| Err(lost())));
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every request was answered"))
            .collect())
    }

    /// What one request costs when run on the caller's thread: measured on such runs, or
    /// failing that on lone runs (the warm-up's included); `None` before either.
    pub fn here_cost(&self) -> Option<Duration> {
        [&self.stats.here_run_ns, &self.stats.solo_run_ns]
            .into_iter()
            .map(|f| f.load(Ordering::Relaxed))
            .find(|&ns| ns != NOT_TIMED)
            .map(Duration::from_nanos)
    }

    fn checked(&self, inputs: Vec<NamedTensor>) -> Result<CheckedInputs, InferError> {
        let checked = self.meta.check_inputs(inputs, self.config.reject_non_finite)?;
        if checked.rows > self.config.max_rows {
            return Err(InferError::TooManyRows {
                rows: checked.rows,
                limit: self.config.max_rows,
            });
        }
        Ok(checked)
    }

    async fn queued(&self, checked: CheckedInputs) -> Result<Vec<Tensor>, InferError> {
        self.submit(checked)?.await.map_err(|_| {
            InferError::Internal(format!("the worker for {} stopped before answering", self.label))
        })?
    }

    /// Whether the request may run on the caller's thread (see the module comment).
    fn may_inline(&self, checked: &CheckedInputs) -> bool {
        let fast = self.stats.solo_run_ns.load(Ordering::Relaxed) <= self.config.inline_max.as_nanos() as u64;
        fast && checked.rows <= INLINE_ROWS
            && self.config.batching == Batching::Adaptive
            && !self.config.idle_priority
            && self.running.load(Ordering::Acquire) == 0
            && self.tx.as_ref().is_some_and(Sender::is_empty)
    }

    /// Runs the jobs as batches of jobs whose inputs stack, at most `max_batch` rows each,
    /// in their order; the answers are for [`deliver`].
    fn run_batches(&self, engine: &mut Engine, jobs: Vec<Job>) -> Answers {
        let max = self.config.max_batch.max(1);
        let mut answers = Vec::with_capacity(jobs.len());
        let (mut batch, mut rows): (Vec<Job>, usize) = (Vec::new(), 0);
        for job in jobs {
            let full = !self.meta.batchable || rows + job.rows > max;
            if !batch.is_empty() && (full || !batch::compatible(&batch[0].inputs, &job.inputs)) {
                answers.extend(engine.run_batch(std::mem::take(&mut batch)));
                rows = 0;
            }
            rows += job.rows;
            batch.push(job);
        }
        if !batch.is_empty() {
            answers.extend(engine.run_batch(batch));
        }
        answers
    }

    /// Answers the gathered requests: on this thread when an engine is idle and nothing waits
    /// for a worker (`here`), otherwise through the queue.
    fn run_gathered(&self, here: bool) {
        let jobs = std::mem::take(&mut *self.gathered.lock().unwrap_or_else(|e| e.into_inner()));
        if jobs.is_empty() {
            return;
        }
        let idle = here && self.tx.as_ref().is_some_and(Sender::is_empty);
        let engine = if idle {
            self.engines.iter().find_map(|e| e.try_lock().ok())
        } else {
            None
        };
        let Some(mut engine) = engine else {
            for job in jobs {
                self.enqueue(job);
            }
            return;
        };
        let n = jobs.len() as u64;
        let answers = self.run_batches(&mut engine, jobs);
        // Idle again before the callers hear back.
        drop(engine);
        self.stats.inline.fetch_add(n, Ordering::Relaxed);
        deliver(answers);
    }

    /// Queues a job whose caller awaits its reply; a full or closed queue answers at once.
    fn enqueue(&self, job: Job) {
        if let Err((job, refusal)) = self.try_queue(job)
            && let Some(reply) = job.reply
        {
            let _ = reply.send(Err(refusal));
        }
    }

    /// Puts a job on the workers' queue; a full or closed queue gives it back with why.
    fn try_queue(&self, job: Job) -> Result<(), (Job, InferError)> {
        let Some(tx) = &self.tx else {
            return Err((job, self.shutting_down()));
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err((job, self.overloaded()))
            }
            Err(TrySendError::Disconnected(job)) => Err((job, self.shutting_down())),
        }
    }

    fn overloaded(&self) -> InferError {
        InferError::Overloaded {
            model: self.label.clone(),
            capacity: self.config.queue_capacity,
        }
    }

    fn shutting_down(&self) -> InferError {
        InferError::NotReady(format!("model {} is shutting down", self.label))
    }

    /// Queues checked inputs without waiting: fails at once with `Overloaded` when the queue
    /// is full. Dropping the returned receiver abandons the request (it will not be run).
    pub fn submit(
        &self,
        checked: CheckedInputs,
    ) -> Result<oneshot::Receiver<Result<Vec<Tensor>, InferError>>, InferError> {
        let CheckedInputs { tensors, rows } = checked;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs: tensors,
            rows,
            reply: Some(reply),
        };
        self.try_queue(job).map_err(|(_, refusal)| refusal)?;
        Ok(rx)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue lets each worker drain what was accepted, then exit.
        self.tx.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The task that runs the gathered requests ([`Pool::infer`]). Dropped before it ran them
/// (its caller gave up), it hands them to the workers, so that no other caller is stranded.
struct Lead<'a> {
    pool: &'a Pool,
    here: bool,
}

impl Lead<'_> {
    fn run_here(mut self) {
        self.here = true;
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.pool.run_gathered(self.here);
    }
}

struct Worker {
    rx: Receiver<Job>,
    engine: Arc<Mutex<Engine>>,
    batchable: bool,
    max_batch: usize,
    max_delay: Duration,
    batching: Batching,
    /// The pool's batches running now.
    running: Arc<AtomicUsize>,
}

impl Worker {
    /// Whether to wait for more requests when none is waiting: always for a fixed delay;
    /// adaptively, only while a batch runs (this worker is collecting, not running).
    fn wait_for_company(&self) -> bool {
        !self.max_delay.is_zero()
            && match self.batching {
                Batching::Fixed => true,
                Batching::Adaptive => self.running.load(Ordering::Acquire) > 0,
            }
    }

    /// `background`: the worker's CPU time counts as background work
    /// ([`crate::priority::background_cpu`]), added after each batch.
    fn run(self, background: bool) {
        // A request that did not fit the previous batch opens the next one, so nothing is
        // reordered behind requests that arrived later.
        let mut carry: Option<Job> = None;
        let mut counted = crate::priority::thread_cpu();
        loop {
            if background {
                let now = crate::priority::thread_cpu();
                crate::priority::add_background_cpu(now.saturating_sub(counted));
                counted = now;
            }
            let first = match carry.take() {
                Some(job) => job,
                None => match self.rx.recv() {
                    Ok(job) => job,
                    Err(_) => return, // queue closed and drained
                },
            };
            let mut rows = first.rows;
            let mut batch = vec![first];
            if self.batchable {
                let deadline = Instant::now() + self.max_delay;
                while rows < self.max_batch {
                    let next = match self.rx.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) if !self.wait_for_company() => break,
                        Err(TryRecvError::Empty) => match self.rx.recv_deadline(deadline) {
                            Ok(job) => job,
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                        },
                    };
                    if rows + next.rows > self.max_batch || !batch::compatible(&batch[0].inputs, &next.inputs)
                    {
                        carry = Some(next);
                        break;
                    }
                    rows += next.rows;
                    batch.push(next);
                }
            }
            // Held by a lone request running inline at most for one short run.
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            let answers = engine.run_batch(batch);
            // Idle again before the callers hear back: the next lone request may run inline.
            drop(engine);
            deliver(answers);
        }
    }
}
