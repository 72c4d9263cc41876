//! Pool behaviour: batching with mixed row counts, models never mixing, overload shedding,
//! failures confined to their batch, and a clean drain on shutdown.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::common::*;
use inference::model::CheckedInputs;
use inference::{InferError, NamedTensor, Pool, PoolConfig, Runner, Tensor, TensorData};

fn rows_input(name: &str, rows: &[Vec<f64>]) -> Vec<NamedTensor> {
    let cols = rows[0].len();
    let data: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    vec![NamedTensor {
        name: name.into(),
        tensor: Tensor::new(vec![rows.len(), cols], TensorData::F32(data)).unwrap(),
    }]
}

/// Requests of 1, 2, 3 and 5 rows, for two versions of the same model that take the same
/// input, all in flight at once: each answer equals that version's own unbatched answer.
/// A batch that mixed versions, or split rows wrongly, would fail this.
#[tokio::test]
async fn mixed_row_counts_across_versions_never_mix() {
    let slow_window = PoolConfig {
        max_delay: Duration::from_millis(50),
        ..PoolConfig::default()
    };
    let load = |v: u64, config: PoolConfig| {
        Arc::new(
            Pool::load(
                "breast-cancer",
                &v.to_string(),
                &models_dir().join(format!("breast-cancer/{v}/model.onnx")),
                config,
            )
            .unwrap(),
        )
    };
    let batched = [load(1, slow_window.clone()), load(2, slow_window)];
    let reference = [
        load(
            1,
            PoolConfig {
                max_batch: 1,
                ..PoolConfig::default()
            },
        ),
        load(
            2,
            PoolConfig {
                max_batch: 1,
                ..PoolConfig::default()
            },
        ),
    ];
    let rows = vector_rows(&vectors("breast-cancer", 1));
    let mut tasks = Vec::new();
    let mut start = 0;
    for (i, n) in [1usize, 2, 3, 5, 1, 2, 3, 5].into_iter().enumerate() {
        let chunk = rows[start..start + n].to_vec();
        start = (start + n) % (rows.len() - 5);
        let pool = batched[i % 2].clone();
        let input = rows_input("input", &chunk);
        tasks.push((
            i % 2,
            chunk,
            tokio::spawn(async move { pool.infer(input).await.unwrap() }),
        ));
    }
    for (version, chunk, task) in tasks {
        let got = task.await.unwrap();
        let want = reference[version]
            .infer(rows_input("input", &chunk))
            .await
            .unwrap();
        assert_eq!(
            got[0],
            want[0],
            "labels of a {}-row request to version {}",
            chunk.len(),
            version + 1
        );
        let (TensorData::F32(g), TensorData::F32(w)) = (got[1].data(), want[1].data()) else {
            panic!()
        };
        assert_eq!(got[1].shape(), want[1].shape());
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1e-6, "version {}: {g:?} vs {w:?}", version + 1);
        }
    }
    for pool in &batched {
        let s = pool.stats();
        assert_eq!(s.requests, 4);
        assert!(s.batches < 4, "no batching happened: {s:?}");
    }
}

/// A model without a batch dimension is never stacked: every request runs alone.
#[tokio::test]
async fn fixed_shape_models_run_one_request_at_a_time() {
    let pool = Arc::new(
        Pool::load(
            "fixed",
            "1",
            &fixtures_dir().join("fixed/1/model.onnx"),
            PoolConfig::default(),
        )
        .unwrap(),
    );
    assert!(!pool.metadata().batchable);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let x = Tensor::new(vec![1, 3], TensorData::F32(vec![i as f32, 0.0, -1.0])).unwrap();
                (
                    i,
                    pool.infer(vec![NamedTensor {
                        name: "x".into(),
                        tensor: x,
                    }])
                    .await
                    .unwrap(),
                )
            })
        })
        .collect();
    for task in tasks {
        let (i, out) = task.await.unwrap();
        assert_eq!(out[0].data(), &TensorData::F32(vec![i as f32 + 1.0, 1.0, 0.0]));
    }
    assert_eq!(pool.stats().batches, 8);
}

// === A runner that blocks until released, or panics on a marked input ===

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    /// Every run fails while set: a model that cannot run at all.
    broken: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

struct GatedEcho {
    gate: Arc<Gate>,
    started: mpsc::Sender<usize>,
}

/// Panics when an input holds this value, to stand for a bug hit by one request.
const POISON: f32 = 666.0;

impl Runner for GatedEcho {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let _ = self.started.send(inputs[0].shape()[0]);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.changed.wait(open).unwrap();
        }
        drop(open); // panicking while holding it would poison the gate for the next batch
        if self.gate.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("the model is broken".into());
        }
        if let TensorData::F32(v) = inputs[0].data()
            && v.contains(&POISON)
        {
            panic!("poisoned input");
        }
        Ok(vec![inputs[0].clone()])
    }
}

fn echo_pool(config: PoolConfig) -> (Arc<Pool>, Arc<Gate>, mpsc::Receiver<usize>) {
    let gate = Arc::new(Gate::default());
    let (started, started_rx) = mpsc::channel();
    let runners: Vec<Box<dyn Runner>> = (0..config.instances)
        .map(|_| {
            Box::new(GatedEcho {
                gate: gate.clone(),
                started: started.clone(),
            }) as Box<dyn Runner>
        })
        .collect();
    (
        Arc::new(Pool::with_runners(echo_meta(), config, runners)),
        gate,
        started_rx,
    )
}

fn row(value: f32) -> CheckedInputs {
    CheckedInputs {
        tensors: vec![Tensor::new(vec![1, 2], TensorData::F32(vec![value, value])).unwrap()],
        rows: 1,
    }
}

#[tokio::test]
async fn a_full_queue_sheds_at_once_and_accepted_requests_still_succeed() {
    let config = PoolConfig {
        instances: 1,
        max_batch: 1,
        queue_capacity: 2,
        ..PoolConfig::default()
    };
    let (pool, gate, started) = echo_pool(config);
    // The worker takes the first request and blocks on the gate...
    let first = pool.submit(row(1.0)).unwrap();
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    // ...so the queue (capacity 2) fills with the next two, and the fourth is refused.
    let queued = [pool.submit(row(2.0)).unwrap(), pool.submit(row(3.0)).unwrap()];
    let refused = pool.submit(row(4.0)).unwrap_err();
    assert!(
        matches!(refused, InferError::Overloaded { capacity: 2, .. }),
        "{refused:?}"
    );
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(pool.queue_depth(), 2);
    gate.open();
    let mut values = vec![];
    for rx in std::iter::once(first).chain(queued) {
        let out = rx.await.unwrap().unwrap();
        let TensorData::F32(v) = out[0].data() else {
            panic!()
        };
        values.push(v[0]);
    }
    assert_eq!(values, vec![1.0, 2.0, 3.0]);
    let s = pool.stats();
    assert_eq!((s.requests, s.rejected, s.failed), (3, 1, 0));
}

#[tokio::test]
async fn a_panic_fails_only_its_batch() {
    let config = PoolConfig {
        instances: 1,
        max_batch: 8,
        max_delay: Duration::from_millis(20),
        ..PoolConfig::default()
    };
    let (pool, gate, started) = echo_pool(config);
    // Hold the worker on a first batch so that the next three requests queue up together.
    let warmup = pool.submit(row(0.0)).unwrap();
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    let same_batch = [
        pool.submit(row(1.0)).unwrap(),
        pool.submit(row(POISON)).unwrap(),
        pool.submit(row(2.0)).unwrap(),
    ];
    gate.open();
    assert!(warmup.await.unwrap().is_ok());
    // The batch of three failed; run one by one, only the poisoned request fails, and as the
    // model ran the others, it is the input's fault: 400, not 500.
    let [one, poisoned, two] = same_batch;
    assert_eq!(
        one.await.unwrap().unwrap()[0].data(),
        &TensorData::F32(vec![1.0, 1.0])
    );
    assert_eq!(
        two.await.unwrap().unwrap()[0].data(),
        &TensorData::F32(vec![2.0, 2.0])
    );
    let err = poisoned.await.unwrap().unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string().contains("worker panicked: poisoned input"),
        "{err}"
    );
    // The worker survived: the next request is answered.
    let after = pool.submit(row(5.0)).unwrap().await.unwrap().unwrap();
    assert_eq!(after[0].data(), &TensorData::F32(vec![5.0, 5.0]));
    let s = pool.stats();
    assert_eq!((s.failed, s.input_failures), (1, 1));
    assert!(pool.healthy());
}

/// Inputs that make the model fail, again and again, never make the pool unready: the model
/// runs its warm-up input each time, so the failures are the inputs'.
#[tokio::test]
async fn failing_inputs_do_not_count_against_health() {
    let config = PoolConfig {
        instances: 1,
        max_batch: 1,
        ..PoolConfig::default()
    };
    let (pool, gate, _started) = echo_pool(config);
    gate.open();
    for _ in 0..3 * inference::pool::UNHEALTHY_AFTER {
        let err = pool.submit(row(POISON)).unwrap().await.unwrap().unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
    }
    assert!(pool.healthy());
    let s = pool.stats();
    assert_eq!(s.input_failures, 3 * inference::pool::UNHEALTHY_AFTER);
    assert_eq!(s.consecutive_failures, 0);
}

#[tokio::test]
async fn a_pool_that_keeps_failing_is_unhealthy_until_a_batch_succeeds() {
    let config = PoolConfig {
        instances: 1,
        max_batch: 1,
        ..PoolConfig::default()
    };
    let (pool, gate, _started) = echo_pool(config);
    gate.open();
    assert!(pool.healthy());
    gate.broken.store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..inference::pool::UNHEALTHY_AFTER {
        assert!(pool.healthy(), "unhealthy after only {i} failures");
        let err = pool.submit(row(1.0)).unwrap().await.unwrap().unwrap_err();
        assert_eq!(err.status(), 500, "the model fails its warm-up input too: {err}");
    }
    assert!(!pool.healthy());
    // The warm-up probe is an ordinary batch: its success makes the pool healthy again.
    gate.broken.store(false, std::sync::atomic::Ordering::Relaxed);
    pool.warm(Duration::from_secs(5)).unwrap();
    assert!(pool.healthy());
    let s = pool.stats();
    assert_eq!(s.consecutive_failures, 0);
    // Every batch here held one request: all in the first bucket of the histogram.
    assert_eq!(s.batch_sizes[0], inference::pool::UNHEALTHY_AFTER + 1);
    assert_eq!(s.batch_sizes.iter().sum::<u64>(), s.batches);
}

/// A real ONNX Runtime error (Gather with an index out of range) fails that request with
/// ORT's reason, and the pool goes on serving.
#[tokio::test]
async fn an_onnx_runtime_error_fails_only_its_request() {
    let pool = Pool::load(
        "gather",
        "1",
        &fixtures_dir().join("gather/1/model.onnx"),
        PoolConfig::default(),
    )
    .unwrap();
    let index = |i: i64| {
        vec![NamedTensor {
            name: "index".into(),
            tensor: Tensor::new(vec![1, 1], TensorData::I64(vec![i])).unwrap(),
        }]
    };
    // The model runs its warm-up input (index 0), so index 42 is the input's fault: 400.
    let err = pool.infer(index(42)).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string().contains("out of"),
        "ORT's reason is passed on: {err}"
    );
    let ok = pool.infer(index(3)).await.unwrap();
    assert_eq!(ok[0].data(), &TensorData::F32(vec![30.0]));
    assert!(pool.healthy());
    // Rows over the pool's cap are refused before they are queued.
    let capped = Pool::load(
        "gather",
        "1",
        &fixtures_dir().join("gather/1/model.onnx"),
        PoolConfig {
            max_rows: 2,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let three = vec![NamedTensor {
        name: "index".into(),
        tensor: Tensor::new(vec![3, 1], TensorData::I64(vec![0, 1, 2])).unwrap(),
    }];
    let err = capped.infer(three).await.unwrap_err();
    assert_eq!(err.status(), 413, "{err}");
    assert_eq!(capped.stats().requests, 0, "refused before it was queued");
}

/// Dropping a pool answers everything it accepted before the workers exit.
#[tokio::test]
async fn dropping_a_pool_drains_its_queue() {
    let config = PoolConfig {
        instances: 2,
        max_batch: 4,
        queue_capacity: 64,
        ..PoolConfig::default()
    };
    let (pool, gate, _started) = echo_pool(config);
    let receivers: Vec<_> = (0..20).map(|i| pool.submit(row(i as f32)).unwrap()).collect();
    gate.open();
    drop(Arc::into_inner(pool).expect("only reference"));
    for (i, rx) in receivers.into_iter().enumerate() {
        let out = rx.await.unwrap().unwrap();
        assert_eq!(out[0].data(), &TensorData::F32(vec![i as f32, i as f32]));
    }
}

#[test]
fn a_missing_or_broken_model_names_its_path_and_the_reason() {
    let dir = std::env::temp_dir().join(format!("broken-model-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("m/1")).unwrap();
    std::fs::write(dir.join("m/1/model.onnx"), b"not an onnx file").unwrap();
    let errors = inference::ModelRepository::load(&dir, &PoolConfig::default())
        .err()
        .expect("must fail");
    let message = errors[0].to_string();
    assert!(message.contains("m/1/model.onnx"), "{message}");
    assert!(message.contains("cannot load model m/1"), "{message}");
    assert!(
        message.len() > "cannot load model m/1 from".len() + dir.display().to_string().len() + 20,
        "ORT's reason is included: {message}"
    );

    let bad = PoolConfig {
        instances: 0,
        max_batch: 0,
        ..PoolConfig::default()
    };
    let err = Pool::load("m", "1", &models_dir().join("digits/1/model.onnx"), bad)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("instances must be at least 1; max_batch must be at least 1"),
        "{err}"
    );
}

/// Adaptive batching: a lone request that finds the pool idle runs at once (the delay here
/// is 10 s: a fixed-delay batcher would start it after 10 s, not within 2), and the requests
/// that arrive while a batch runs make the next batch by themselves.
#[tokio::test]
async fn a_lone_request_runs_at_once_and_waiting_requests_batch() {
    let config = PoolConfig {
        instances: 1,
        max_batch: 32,
        max_delay: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let (pool, gate, started) = echo_pool(config);
    let first = pool.submit(row(1.0)).unwrap();
    assert_eq!(started.recv_timeout(Duration::from_secs(2)), Ok(1));
    let waiting: Vec<_> = (0..5).map(|i| pool.submit(row(i as f32)).unwrap()).collect();
    gate.open();
    first.await.unwrap().unwrap();
    assert_eq!(started.recv_timeout(Duration::from_secs(2)), Ok(5));
    for rx in waiting {
        rx.await.unwrap().unwrap();
    }
}

/// While another instance runs, a worker holds its batch open for company (up to
/// `max_delay`, or until `max_batch` rows).
#[tokio::test]
async fn a_worker_waits_for_company_while_another_runs() {
    let config = PoolConfig {
        instances: 2,
        max_batch: 3,
        max_delay: Duration::from_secs(10),
        ..PoolConfig::default()
    };
    let (pool, gate, started) = echo_pool(config);
    let first = pool.submit(row(1.0)).unwrap();
    assert_eq!(started.recv_timeout(Duration::from_secs(2)), Ok(1));
    // The other worker takes the next request and, the first worker running, waits: the
    // two after it join its batch, which then has max_batch rows and starts.
    let next: Vec<_> = (0..3).map(|i| pool.submit(row(i as f32)).unwrap()).collect();
    assert_eq!(started.recv_timeout(Duration::from_secs(2)), Ok(3));
    gate.open();
    first.await.unwrap().unwrap();
    for rx in next {
        rx.await.unwrap().unwrap();
    }
}
