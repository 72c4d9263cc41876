//! Lone requests and bursts run on the caller's thread: only when the pool is idle, the model
//! was timed fast and the requests are small (a burst as batches, none stranded when its first
//! caller gives up); never for a slow model, a pool at idle priority, with fixed-delay
//! batching or with `inline_max` 0; and a failure inline is sorted out as on a worker. A shadow runtime runs its copies to a pool only
//! shadows use on its own thread, in batches ([`Pool::run_here`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use inference::pool::{INLINE_ROWS, NOT_TIMED};
use inference::{Batching, InferError, NamedTensor, Pool, PoolConfig, Runner, Tensor, TensorData};

/// Echoes its input after `delay`, noting the thread each run was on; fails while `broken`,
/// and on an input holding [`BAD`] (the model "cannot run on it").
struct Echo {
    delay: Duration,
    threads: Arc<Mutex<Vec<String>>>,
    broken: Arc<AtomicBool>,
}

const BAD: f32 = -1.0;

impl Runner for Echo {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(name);
        std::thread::sleep(self.delay);
        if self.broken.load(Ordering::Relaxed) {
            return Err("the model is broken".into());
        }
        if let TensorData::F32(v) = inputs[0].data()
            && v.contains(&BAD)
        {
            return Err("index out of range".into());
        }
        Ok(vec![inputs[0].clone()])
    }
}

struct Fixture {
    pool: Arc<Pool>,
    threads: Arc<Mutex<Vec<String>>>,
    broken: Arc<AtomicBool>,
}

impl Fixture {
    fn new(delay: Duration, config: PoolConfig) -> Fixture {
        let meta = common::echo_meta();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let broken = Arc::new(AtomicBool::new(false));
        let runners: Vec<Box<dyn Runner>> = (0..config.instances)
            .map(|_| {
                Box::new(Echo {
                    delay,
                    threads: threads.clone(),
                    broken: broken.clone(),
                }) as Box<dyn Runner>
            })
            .collect();
        Fixture {
            pool: Arc::new(Pool::with_runners(meta, config, runners)),
            threads,
            broken,
        }
    }

    /// Threads the runs since the last call were on.
    fn ran_on(&self) -> Vec<String> {
        std::mem::take(&mut *self.threads.lock().unwrap())
    }
}

fn rows(n: usize, value: f32) -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::new(vec![n, 2], TensorData::F32(vec![value; 2 * n])).unwrap(),
    }]
}

const WORKER: &str = "infer-echo/1-0";

fn here() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

#[tokio::test]
async fn a_lone_request_runs_on_the_callers_thread_once_the_model_was_timed_fast() {
    let f = Fixture::new(Duration::ZERO, PoolConfig::default());
    assert_eq!(f.pool.stats().inline, 0);
    // Not timed yet: the first runs on the worker, and times the model.
    f.pool.infer(rows(1, 1.0)).await.unwrap();
    assert_eq!(f.ran_on(), [WORKER]);
    for value in [2.0, 3.0] {
        let out = f.pool.infer(rows(INLINE_ROWS, value)).await.unwrap();
        assert_eq!(out[0], rows(INLINE_ROWS, value)[0].tensor);
    }
    let h = here();
    assert_eq!(f.ran_on(), [h.as_str(), &h]);
    let s = f.pool.stats();
    assert_eq!((s.inline, s.requests, s.batches), (2, 3, 3));
    // One row more than INLINE_ROWS goes to the worker.
    f.pool.infer(rows(INLINE_ROWS + 1, 4.0)).await.unwrap();
    assert_eq!(f.ran_on(), [WORKER]);
}

/// Sends `n` one-row requests at once from tasks of this thread (the pool timed fast first)
/// and checks each answer; the pool's counters over the burst: (inline, batches).
async fn burst(f: &Fixture, n: usize) -> (u64, u64) {
    f.pool.infer(rows(1, 1.0)).await.unwrap(); // timed: fast
    f.ran_on();
    let before = f.pool.stats();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let pool = f.pool.clone();
            tokio::spawn(async move { pool.infer(rows(1, i as f32)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap()[0], rows(1, i as f32)[0].tensor);
    }
    let s = f.pool.stats();
    (s.inline - before.inline, s.batches - before.batches)
}

/// Requests that arrive together on one thread batch there: the first lets its thread's
/// other ready work go first, the others join it meanwhile, and it runs them all as one
/// batch. Without the wait, on this one-thread runtime every one of them would run alone.
#[tokio::test]
async fn a_burst_batches_on_the_callers_thread() {
    let f = Fixture::new(Duration::ZERO, PoolConfig::default());
    assert_eq!(burst(&f, 8).await, (8, 1), "8 requests inline in one run");
    assert_eq!(f.ran_on(), [here()]);
}

/// More gathered rows than `max_batch` run as several batches, in their order.
#[tokio::test]
async fn a_burst_over_max_batch_runs_as_several_batches() {
    let config = PoolConfig {
        max_batch: 4,
        ..PoolConfig::default()
    };
    let f = Fixture::new(Duration::ZERO, config);
    assert_eq!(burst(&f, 10).await, (10, 3));
    assert_eq!(f.ran_on(), [here(), here(), here()]);
}

/// A caller that gave up while it held the gathered requests hands them to the worker: the
/// others still get their answers.
#[tokio::test]
async fn the_others_are_answered_when_the_first_caller_gives_up() {
    let f = Fixture::new(Duration::ZERO, PoolConfig::default());
    f.pool.infer(rows(1, 1.0)).await.unwrap();
    f.ran_on();
    let mut first = Box::pin(f.pool.infer(rows(1, 7.0)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        first.as_mut().poll(&mut cx).is_pending(),
        "the first waits for the others"
    );
    let pool = f.pool.clone();
    let second = tokio::spawn(async move { pool.infer(rows(1, 8.0)).await });
    tokio::task::yield_now().await; // the second joins the first
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second).await;
    let second = second.expect("the second caller was stranded").unwrap().unwrap();
    assert_eq!(second[0], rows(1, 8.0)[0].tensor);
    assert!(f.ran_on().iter().all(|t| t == WORKER));
}

#[tokio::test]
async fn a_slow_model_never_runs_inline() {
    let config = PoolConfig {
        inline_max: Duration::from_micros(100),
        ..PoolConfig::default()
    };
    let f = Fixture::new(Duration::from_millis(2), config);
    for i in 0..4 {
        f.pool.infer(rows(1, i as f32)).await.unwrap();
    }
    assert_eq!(f.ran_on(), [WORKER; 4]);
    let s = f.pool.stats();
    assert_eq!(s.inline, 0);
    assert!(
        s.solo_run_ns >= 2_000_000 && s.solo_run_ns != NOT_TIMED,
        "{}",
        s.solo_run_ns
    );
}

#[tokio::test]
async fn inline_max_zero_fixed_batching_and_idle_priority_pools_never_run_inline() {
    for config in [
        PoolConfig {
            inline_max: Duration::ZERO,
            ..PoolConfig::default()
        },
        PoolConfig {
            idle_priority: true,
            ..PoolConfig::default()
        },
        PoolConfig {
            batching: Batching::Fixed,
            ..PoolConfig::default()
        },
    ] {
        let f = Fixture::new(Duration::ZERO, config);
        for i in 0..3 {
            f.pool.infer(rows(1, i as f32)).await.unwrap();
        }
        assert_eq!(f.ran_on(), [WORKER; 3]);
        assert_eq!(f.pool.stats().inline, 0);
    }
    // And a shadow's copy never does, whatever the pool.
    let f = Fixture::new(Duration::ZERO, PoolConfig::default());
    for i in 0..3 {
        f.pool.infer_queued(rows(1, i as f32)).await.unwrap();
    }
    assert_eq!(f.ran_on(), [WORKER; 3]);
}

/// A failure inline is told apart as on a worker: the input's fault is a 400 and the pool
/// stays healthy; a model that fails its warm-up input too is a 500 and counts against it.
#[tokio::test]
async fn failures_inline_are_sorted_out_as_on_a_worker() {
    let f = Fixture::new(Duration::ZERO, PoolConfig::default());
    f.pool.infer(rows(1, 1.0)).await.unwrap();
    let err = f.pool.infer(rows(1, BAD)).await.unwrap_err();
    assert!(matches!(err, InferError::BadRequest(_)), "{err:?}");
    assert!(f.pool.healthy());
    f.broken.store(true, Ordering::Relaxed);
    let err = f.pool.infer(rows(1, 2.0)).await.unwrap_err();
    assert!(matches!(err, InferError::Internal(_)), "{err:?}");
    let s = f.pool.stats();
    assert_eq!(
        (s.inline, s.failed, s.input_failures, s.consecutive_failures),
        (2, 2, 1, 1)
    );
    // Both ran here, each followed by its warm-up probe.
    let h = here();
    assert_eq!(f.ran_on(), [WORKER, &h, &h, &h, &h]);
}

/// A shadow runtime's copies to a pool only shadows use run on the caller's thread
/// ([`Pool::run_here`]), stacked while they fit `max_batch` rows; each gets its own answer
/// in its place, and a request the model cannot run, or whose inputs are wrong, fails alone.
#[test]
fn run_here_batches_on_the_caller_s_thread_and_answers_each_in_its_place() {
    let config = PoolConfig {
        max_batch: 4,
        idle_priority: true,
        batching: Batching::Fixed,
        ..PoolConfig::default()
    };
    let f = Fixture::new(Duration::ZERO, config);
    let f32s = |answer: &Result<Vec<Tensor>, InferError>| match answer.as_ref().unwrap()[0].data() {
        TensorData::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let wrong_shape = vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::new(vec![1, 3], TensorData::F32(vec![0.0; 3])).unwrap(),
    }];
    let requests = vec![
        rows(1, 1.0),
        rows(2, 2.0),
        rows(2, 3.0),
        rows(1, BAD),
        wrong_shape,
        rows(1, 5.0),
    ];
    let answers = f.pool.run_here(requests);
    assert_eq!(answers.len(), 6);
    assert_eq!(f32s(&answers[0]), vec![1.0; 2]);
    assert_eq!(f32s(&answers[1]), vec![2.0; 4]);
    assert_eq!(f32s(&answers[2]), vec![3.0; 4]);
    assert!(
        matches!(answers[3], Err(InferError::BadRequest(_))),
        "{:?}",
        answers[3]
    );
    assert!(answers[4].is_err());
    assert_eq!(f32s(&answers[5]), vec![5.0; 2]);
    // Rows 1 + 2, then 2 + 1 + 1 (the bad one breaks it: each again alone, then the model's
    // warm-up input shows it was the input's fault); all here.
    let h = here();
    let ran = f.ran_on();
    assert!(ran.len() >= 5 && ran.iter().all(|t| *t == h), "{ran:?}");
    assert!(f.pool.healthy());
}
