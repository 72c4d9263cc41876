//! What runs a batch: a [`Runner`] with what it needs to sort out failures, and the pool's
//! counters. A pool has one engine per instance; its worker thread locks it for each batch,
//! and a lone request may lock an idle one to run on the caller's own thread
//! ([`crate::pool::Pool::infer`]): either way the same code runs it, counts it and answers it.
//!
//! One bad request fails alone: when a batch of several fails (ORT error, or a panic in our
//! code), each of its requests runs again by itself, so only the one that caused it gets
//! the error. A failure counts against the pool's health only when the model cannot run
//! its warm-up input either: a client whose input breaks the model gets a 400 and cannot
//! make the pool unready for everyone else (nor, answering 5xx, roll a canary back).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::batch;
use crate::error::InferError;
use crate::model::{ModelMetadata, NamedTensor};
use crate::runner::Runner;
use crate::tensor::{Tensor, TensorData};

/// Upper bounds of the batch-size histogram (requests per ONNX Runtime run); one more
/// bucket counts the batches above the last.
pub const BATCH_BUCKETS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// After this many failed batches in a row a pool reports itself unhealthy, until one
/// succeeds (see [`crate::pool::Pool::healthy`]).
pub const UNHEALTHY_AFTER: u64 = 5;

/// Requests of at most this many rows may run on the caller's thread, and their runs time
/// the model for that decision ([`PoolStats::solo_run_ns`]): the bundled models run a few
/// rows in about the time of one, so the timing of one such run stands for the others.
pub const INLINE_ROWS: usize = 8;

/// What [`PoolStats::solo_run_ns`] holds before a run was timed: nothing runs inline yet.
pub const NOT_TIMED: u64 = u64::MAX;

/// Counters for metrics and benchmarks. Monotonic; read with [`crate::pool::Pool::stats`].
#[derive(Debug)]
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
    /// Of `requests`: run on the caller's thread, not handed to a worker.
    pub inline: AtomicU64,
    /// Batches per bucket of [`BATCH_BUCKETS`] (not cumulative), plus one above the last.
    pub batch_sizes: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// Failed batches since the last one that succeeded.
    pub consecutive_failures: AtomicU64,
    /// How long one request of at most [`INLINE_ROWS`] rows runs alone, smoothed over the
    /// last few such runs (ns; [`NOT_TIMED`] before the first).
    pub solo_run_ns: AtomicU64,
    /// CPU per request of the runs made on callers' threads ([`crate::Pool::run_here`]),
    /// smoothed like `solo_run_ns` ([`NOT_TIMED`] before the first).
    pub here_run_ns: AtomicU64,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            requests: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            input_failures: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            batch_sizes: Default::default(),
            consecutive_failures: AtomicU64::new(0),
            solo_run_ns: AtomicU64::new(NOT_TIMED),
            here_run_ns: AtomicU64::new(NOT_TIMED),
        }
    }
}

pub type Reply = oneshot::Sender<Answer>;

/// A batch's answers, each with the reply it goes to (none for a request run inline, whose
/// caller takes its answer straight from the run): delivered by the caller once it let go
/// of the engine ([`deliver`]), so that a caller woken by its answer finds the engine free.
pub type Answers = Vec<(Option<Reply>, Answer)>;

/// One request's answer: its outputs, or why there are none.
pub type Answer = Result<Vec<Tensor>, InferError>;

pub fn deliver(answers: Answers) {
    for (reply, answer) in answers {
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

pub struct Job {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    /// None when the caller runs the batch itself (inline) and is still there.
    pub reply: Option<Reply>,
}

pub struct Engine {
    runner: Box<dyn Runner>,
    /// The warm-up inputs in the model's order, made on first need.
    probe: Option<Vec<Tensor>>,
    meta: Arc<ModelMetadata>,
    stats: Arc<PoolStats>,
    /// The pool's batches running now, on workers or inline.
    running: Arc<AtomicUsize>,
}

impl Engine {
    pub fn new(
        runner: Box<dyn Runner>,
        meta: Arc<ModelMetadata>,
        stats: Arc<PoolStats>,
        running: Arc<AtomicUsize>,
    ) -> Engine {
        Engine {
            runner,
            probe: None,
            meta,
            stats,
            running,
        }
    }

    /// Runs the batch's requests as one ORT call, counted in `running` meanwhile (which
    /// is back down before anyone hears the answers); the answers are for [`deliver`].
    pub fn run_batch(&mut self, batch: Vec<Job>) -> Answers {
        self.running.fetch_add(1, Ordering::AcqRel);
        let answers = self.run(batch);
        self.running.fetch_sub(1, Ordering::AcqRel);
        answers
    }

    fn run(&mut self, batch: Vec<Job>) -> Answers {
        let stats = self.stats.clone();
        let before = batch.len();
        let batch: Vec<Job> = batch
            .into_iter()
            .filter(|job| !job.reply.as_ref().is_some_and(Reply::is_closed))
            .collect();
        stats
            .abandoned
            .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
        if batch.is_empty() {
            return Vec::new();
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
        let started = Instant::now();
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
                if batch.len() == 1 && rows[0] <= INLINE_ROWS {
                    self.timed_solo(started.elapsed().as_nanos() as u64);
                }
                stats.consecutive_failures.store(0, Ordering::Relaxed);
                return batch
                    .into_iter()
                    .zip(per_request)
                    .map(|(job, outputs)| (job.reply, Ok(outputs)))
                    .collect();
            }
            Err(reason) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                return self.fail(vec![(job, reason)], false);
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
        let mut answers = Vec::with_capacity(failed.len());
        let mut failures = Vec::new();
        for job in failed {
            let runner = &mut self.runner;
            match guarded(|| runner.run(&job.inputs)) {
                Ok(outputs) => {
                    others_ran = true;
                    answers.push((job.reply, Ok(outputs)));
                }
                Err(reason) => failures.push((job, reason)),
            }
        }
        if failures.is_empty() {
            stats.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            answers.extend(self.fail(failures, others_ran));
        }
        answers
    }

    /// Smooths the time of one lone run into [`PoolStats::solo_run_ns`]: a quarter of the new
    /// run each time, so that one slow run (ORT's first, a preempted one) moves it little and
    /// a model that became slower shows within a few runs.
    fn timed_solo(&self, ns: u64) {
        smooth(&self.stats.solo_run_ns, ns);
    }

    /// Answers requests whose run failed. It is the input's fault when the model ran other
    /// requests (of the same batch) or runs its warm-up input now: 400, and the pool stays
    /// healthy. Otherwise the model is failing: 500, one more failure in a row.
    fn fail(&mut self, failures: Vec<(Job, String)>, others_ran: bool) -> Answers {
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
        let mut answers = Vec::with_capacity(failures.len());
        for (job, reason) in failures {
            if model_runs {
                tracing::info!(
                    model = %self.meta.name,
                    version = %self.meta.version,
                    "a request's input made the model fail (answered 400): {reason}"
                );
                answers.push((
                    job.reply,
                    Err(InferError::bad_request(format!(
                        "the model cannot run on this input (it runs on others): {reason}"
                    ))),
                ));
            } else {
                tracing::error!(
                    model = %self.meta.name,
                    version = %self.meta.version,
                    "inference failed, and the model fails its warm-up input too: {reason}"
                );
                answers.push((job.reply, Err(InferError::Internal(reason))));
            }
        }
        answers
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

/// One row of zeros for every input (dynamic dimensions 1): what a pool's warm-up runs, and
/// what an engine runs to tell a model that fails from an input that makes it fail.
pub fn warm_up_inputs(meta: &ModelMetadata) -> Result<Vec<NamedTensor>, String> {
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

/// Moves a smoothed figure a quarter of the way to `ns` (or sets it, if it was [`NOT_TIMED`]).
pub(crate) fn smooth(figure: &AtomicU64, ns: u64) {
    let old = figure.load(Ordering::Relaxed);
    let new = if old == NOT_TIMED { ns } else { (old * 3 + ns) / 4 };
    figure.store(new, Ordering::Relaxed);
}
