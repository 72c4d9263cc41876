//! Pool throughput with dynamic batching off (max_batch 1) and on (max_batch 32, adaptive, and
//! fixed-delay for reference), at 64 requests in flight, on the real breast-cancer/1 model.
//! No HTTP: this isolates what batching buys inside the pool.
//!
//!     cargo bench -p inference --bench pool_batching -- [--seconds 5] [--concurrency 64]
//!
//! `loadtests/bench_inference.sh` runs it pinned to one core, like the server benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use inference::{Batching, NamedTensor, Pool, PoolConfig, Tensor, TensorData};

struct Run {
    max_batch: usize,
    batching: Batching,
    requests: u64,
    elapsed: Duration,
    cpu: Duration,
    rows_per_run: f64,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time used by this process so far (user + system), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Linux reports in USER_HZ, which is 100 on every mainstream configuration.
    Duration::from_millis(ticks * 10)
}

fn one_row() -> Vec<NamedTensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/breast-cancer-1.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let row: Vec<f32> = v["input"]["data"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    vec![NamedTensor {
        name: "input".into(),
        tensor: Tensor::new(vec![1, 30], TensorData::F32(row)).unwrap(),
    }]
}

fn measure(max_batch: usize, batching: Batching, concurrency: usize, seconds: u64) -> Run {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/breast-cancer/1/model.onnx");
    let config = PoolConfig {
        max_batch,
        batching,
        queue_capacity: concurrency * 2,
        ..PoolConfig::default()
    };
    let pool = Arc::new(Pool::load("breast-cancer", "1", &model, config).expect("model loads"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let input = one_row();
    runtime.block_on(async {
        // Warm-up: first runs allocate ORT's buffers.
        for _ in 0..200 {
            pool.infer(input.clone()).await.unwrap();
        }
    });
    let before_stats = pool.stats();
    let cpu_before = process_cpu();
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (pool, done, stop, input) = (pool.clone(), done.clone(), stop.clone(), input.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        pool.infer(input.clone()).await.expect("inference succeeds");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    let cpu = process_cpu() - cpu_before;
    let after = pool.stats();
    let rows = (after.rows - before_stats.rows) as f64;
    let batches = (after.batches - before_stats.batches).max(1) as f64;
    Run {
        max_batch,
        batching,
        requests: done.load(Ordering::Relaxed),
        elapsed,
        cpu,
        rows_per_run: rows / batches,
    }
}

fn main() {
    let seconds = arg("--seconds", 5);
    let concurrency = arg("--concurrency", 64) as usize;
    if let Err(e) = inference::runtime::environment() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!(
        "pool benchmark: breast-cancer/1, {concurrency} requests in flight, {seconds} s per setting, 1 worker"
    );
    // The speed-up is the default (adaptive) batcher's; the fixed-delay one is shown beside it.
    let runs: Vec<Run> = [
        (1, Batching::Adaptive),
        (32, Batching::Adaptive),
        (32, Batching::Fixed),
    ]
    .into_iter()
    .map(|(b, batching)| measure(b, batching, concurrency, seconds))
    .collect();
    println!(
        "{:>9} {:>9} {:>12} {:>14} {:>12}",
        "max_batch", "batching", "requests/s", "cpu µs/request", "rows/run"
    );
    for r in &runs {
        println!(
            "{:>9} {:>9} {:>12.0} {:>14.2} {:>12.1}",
            r.max_batch,
            format!("{:?}", r.batching).to_lowercase(),
            r.requests as f64 / r.elapsed.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e6 / r.requests.max(1) as f64,
            r.rows_per_run
        );
    }
    let rate = |r: &Run| r.requests as f64 / r.elapsed.as_secs_f64();
    println!("BATCHING_SPEEDUP {:.2}", rate(&runs[1]) / rate(&runs[0]));
}
