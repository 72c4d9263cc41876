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
//! - One bad request fails alone: when a batch of several fails (ORT error, or a panic in our
//!   code), each of its requests runs again by itself, so only the one that caused it gets
//!   the error. A failure counts against the pool's health only when the model cannot run
//!   its warm-up input either: a client whose input breaks the model gets a 400 and cannot
//!   make the pool unready for everyone else (nor, answering 5xx, roll a canary back).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use crate::batch;
use crate::error::InferError;
use crate::model::{self, CheckedInputs, LoadError, ModelMetadata, NamedTensor};
pub use crate::runner::{OrtRunner, Runner};
use crate::tensor::{Tensor, TensorData};

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

/// Upper bounds of the batch-size histogram (requests per ONNX Runtime run); one more
/// bucket counts the batches above the last.
pub const BATCH_BUCKETS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// After this many failed batches in a row a pool reports itself unhealthy, until one
/// succeeds (see [`Pool::healthy`]).
pub const UNHEALTHY_AFTER: u64 = 5;

/// Counters for metrics and benchmarks. Monotonic; read with [`Pool::stats`].
#[derive(Debug, Default)]
pub struct PoolStats {
    pub requests: AtomicU64,
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    /// Of `failed`: requests whose own input made the model fail (it ran others, or its
    /// warm-up input); answered 400, not counted against health.
    pub input_failures: AtomicU64,
    /// Requests whose caller had gone (timed out, disconnected) before a worker reached them.
    pub abandoned: AtomicU64,
    /// Batches per bucket of [`BATCH_BUCKETS`] (not cumulative), plus one above the last.
    pub batch_sizes: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// Failed batches since the last one that succeeded.
    pub consecutive_failures: AtomicU64,
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
    pub batch_sizes: [u64; BATCH_BUCKETS.len() + 1],
    pub consecutive_failures: u64,
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, InferError>>;

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    reply: Reply,
}

/// A model version being served. Dropping the pool lets the workers finish every queued
/// request, then joins them.
pub struct Pool {
    meta: Arc<ModelMetadata>,
    config: PoolConfig,
    label: String,
    tx: Option<Sender<Job>>,
    stats: Arc<PoolStats>,
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
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers = runners
            .into_iter()
            .enumerate()
            .map(|(i, runner)| {
                let idle = config.idle_priority;
                let worker = Worker {
                    rx: rx.clone(),
                    runner,
                    probe: None,
                    meta: meta.clone(),
                    max_batch: config.max_batch.max(1),
                    max_delay: config.max_delay,
                    batching: config.batching,
                    running: running.clone(),
                    stats: stats.clone(),
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
            batch_sizes: std::array::from_fn(|i| s.batch_sizes[i].load(Ordering::Relaxed)),
            consecutive_failures: s.consecutive_failures.load(Ordering::Relaxed),
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

    /// Checks, queues and awaits one request. Outputs come back in the model's output order.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<Tensor>, InferError> {
        let checked = self.meta.check_inputs(inputs, self.config.reject_non_finite)?;
        if checked.rows > self.config.max_rows {
            return Err(InferError::TooManyRows {
                rows: checked.rows,
                limit: self.config.max_rows,
            });
        }
        self.submit(checked)?.await.map_err(|_| {
            InferError::Internal(format!("the worker for {} stopped before answering", self.label))
        })?
    }

    /// Queues checked inputs without waiting: fails at once with `Overloaded` when the queue
    /// is full. Dropping the returned receiver abandons the request (it will not be run).
    pub fn submit(
        &self,
        checked: CheckedInputs,
    ) -> Result<oneshot::Receiver<Result<Vec<Tensor>, InferError>>, InferError> {
        let CheckedInputs { tensors, rows } = checked;
        let Some(tx) = &self.tx else {
            return Err(InferError::NotReady(format!(
                "model {} is shutting down",
                self.label
            )));
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Job {
            inputs: tensors,
            rows,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(InferError::Overloaded {
                    model: self.label.clone(),
                    capacity: self.config.queue_capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(InferError::NotReady(format!(
                "model {} is shutting down",
                self.label
            ))),
        }
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

/// One row of zeros for every input (dynamic dimensions 1): what [`Pool::warm`] runs, and what
/// a worker runs to tell a model that fails from an input that makes it fail.
fn warm_up_inputs(meta: &ModelMetadata) -> Result<Vec<NamedTensor>, String> {
    meta.inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|&d| if d > 0 { d as usize } else { 1 })
                .collect();
            let len = shape.iter().product();
            Ok(NamedTensor {
                name: spec.name.clone(),
                tensor: Tensor::new(shape, TensorData::zeros(spec.datatype, len))?,
            })
        })
        .collect()
}

struct Worker {
    rx: Receiver<Job>,
    runner: Box<dyn Runner>,
    /// The warm-up inputs in the model's order, made on first need.
    probe: Option<Vec<Tensor>>,
    meta: Arc<ModelMetadata>,
    max_batch: usize,
    max_delay: Duration,
    batching: Batching,
    /// The pool's workers running a batch now.
    running: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<PoolStats>,
}

impl Worker {
    /// Whether to wait for more requests when none is waiting: always for a fixed delay;
    /// adaptively, only while another worker runs (this one is collecting, not running).
    fn wait_for_company(&self) -> bool {
        !self.max_delay.is_zero()
            && match self.batching {
                Batching::Fixed => true,
                Batching::Adaptive => self.running.load(Ordering::Acquire) > 0,
            }
    }

    /// `background`: the worker's CPU time counts as background work
    /// ([`crate::priority::background_cpu`]), added after each batch.
    fn run(mut self, background: bool) {
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
            if self.meta.batchable {
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
            self.running.fetch_add(1, Ordering::AcqRel);
            self.run_batch(batch);
            self.running.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let stats = self.stats.clone();
        let before = batch.len();
        let batch: Vec<Job> = batch.into_iter().filter(|job| !job.reply.is_closed()).collect();
        stats
            .abandoned
            .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
        if batch.is_empty() {
            return;
        }
        let rows: Vec<usize> = batch.iter().map(|job| job.rows).collect();
        stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .rows
            .fetch_add(rows.iter().sum::<usize>() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&b| batch.len() <= b)
            .unwrap_or(BATCH_BUCKETS.len());
        stats.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);

        let runner = &mut self.runner;
        let outcome = guarded(|| {
            if batch.len() == 1 {
                let outputs = runner.run(&batch[0].inputs)?;
                return batch::split(outputs, &rows);
            }
            let inputs: Vec<&[Tensor]> = batch.iter().map(|job| job.inputs.as_slice()).collect();
            let stacked = batch::stack(&inputs)?;
            let outputs = runner.run(&stacked)?;
            batch::split(outputs, &rows)
        });
        let failed = match outcome {
            Ok(per_request) => {
                stats.consecutive_failures.store(0, Ordering::Relaxed);
                for (job, outputs) in batch.into_iter().zip(per_request) {
                    let _ = job.reply.send(Ok(outputs));
                }
                return;
            }
            Err(reason) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                self.fail(vec![(job, reason)], false);
                return;
            }
            Err(reason) => {
                // One request may have broken the batch: each runs again by itself, so that
                // only the one that caused it fails.
                tracing::warn!(
                    model = %self.meta.name,
                    version = %self.meta.version,
                    requests = batch.len(),
                    "batch failed ({reason}); running its requests one by one"
                );
                batch
            }
        };
        let mut others_ran = false;
        let mut failures = Vec::new();
        for job in failed {
            let runner = &mut self.runner;
            match guarded(|| runner.run(&job.inputs)) {
                Ok(outputs) => {
                    others_ran = true;
                    let _ = job.reply.send(Ok(outputs));
                }
                Err(reason) => failures.push((job, reason)),
            }
        }
        if failures.is_empty() {
            stats.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            self.fail(failures, others_ran);
        }
    }

    /// Answers requests whose run failed. It is the input's fault when the model ran other
    /// requests (of the same batch) or runs its warm-up input now: 400, and the pool stays
    /// healthy. Otherwise the model is failing: 500, one more failure in a row.
    fn fail(&mut self, failures: Vec<(Job, String)>, others_ran: bool) {
        let stats = self.stats.clone();
        let model_runs = others_ran || self.probe_runs();
        stats.failed.fetch_add(failures.len() as u64, Ordering::Relaxed);
        if model_runs {
            stats.consecutive_failures.store(0, Ordering::Relaxed);
            stats
                .input_failures
                .fetch_add(failures.len() as u64, Ordering::Relaxed);
        } else {
            stats.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
        for (job, reason) in failures {
            if model_runs {
                tracing::info!(
                    model = %self.meta.name,
                    version = %self.meta.version,
                    "a request's input made the model fail (answered 400): {reason}"
                );
                let _ = job.reply.send(Err(InferError::bad_request(format!(
                    "the model cannot run on this input (it runs on others): {reason}"
                ))));
            } else {
                tracing::error!(
                    model = %self.meta.name,
                    version = %self.meta.version,
                    "inference failed, and the model fails its warm-up input too: {reason}"
                );
                let _ = job.reply.send(Err(InferError::Internal(reason)));
            }
        }
    }

    /// Whether the model runs its warm-up input (one row of zeros) right now.
    fn probe_runs(&mut self) -> bool {
        if self.probe.is_none() {
            let inputs = warm_up_inputs(&self.meta)
                .and_then(|i| self.meta.check_inputs(i, false).map_err(|e| e.to_string()));
            match inputs {
                Ok(checked) => self.probe = Some(checked.tensors),
                Err(_) => return false,
            }
        }
        let (runner, probe) = (&mut self.runner, self.probe.as_deref().unwrap_or_default());
        guarded(|| runner.run(probe)).is_ok()
    }
}

/// Runs `f`, turning a panic into an error: a bug hit by one batch must not end the worker.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!("worker panicked: {what}"))
        }
    }
}
