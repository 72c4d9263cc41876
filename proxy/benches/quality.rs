//! The model-quality figures, measured on the shipped code (`proxy::quality`) with the
//! bundled models' profiles and held-out rows:
//!
//! 1. the request path's cost of recording: finding the variant's window, the sampling
//!    decision, copying a sampled row, its predicted class, and the feedback record (median
//!    of rounds, ns per request);
//! 2. the memory of one route variant's window, and of one prediction waiting for its label;
//! 3. the false-alarm rate of the drift threshold on in-distribution traffic: many windows
//!    drawn (with replacement) from held-out rows the models never saw, and the share whose
//!    largest feature PSI is over the threshold;
//! 4. the requests needed to detect a stated shift: a window of in-distribution rows, then
//!    shifted rows one request at a time until the figure crosses the threshold.
//!
//!     cargo bench -p proxy --bench quality -- [--window 1000] [--threshold 0.25] [--trials 1000]
//!
//! `loadtests/bench_quality.sh` runs it pinned to one core and writes the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inference::{NamedTensor, Tensor, TensorData};
use proxy::config::Variant;
use proxy::config::quality::FeedbackSettings;
use proxy::quality::drift::Window;
use proxy::quality::profile::Profile;
use proxy::quality::store::Served;
use proxy::quality::{Quality, SystemWallClock, WallClock};
use rand::{RngExt, SeedableRng};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn heldout(dataset: &str) -> Vec<Vec<f32>> {
    let text =
        std::fs::read_to_string(repo().join(format!("models/testdata/{dataset}-heldout.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn profile(model: &str) -> Arc<Profile> {
    Arc::new(Profile::load(&repo().join(format!("models/{model}/1/profile.json")), None).unwrap())
}

/// What the service records for feedback after one one-row prediction.
fn served(at_ms: u64) -> Served {
    Served {
        tenant: "dev".into(),
        route: "breast-cancer".into(),
        variant: "stable".into(),
        version: "1".into(),
        forced: false,
        classes: vec![1],
        at_ms,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per request of what the service does for quality on every request.
fn recording_cost(quality: &Quality, profile: &Arc<Profile>, row: &[f32], every: u64, feedback: bool) -> f64 {
    let inputs = vec![NamedTensor {
        name: "input".into(),
        tensor: Tensor::new(vec![1, row.len()], TensorData::F32(row.to_vec())).unwrap(),
    }];
    const N: usize = 200_000;
    let mut rounds = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        for i in 0..N {
            let w = quality.window("breast-cancer", Variant::Stable, "1", Some(profile), 1000);
            if w.sampled(every) {
                quality.record_inputs(&w, &inputs);
                w.record_classes(&[1]);
            }
            if feedback {
                quality.served(&format!("{i:032x}"), served(SystemWallClock.now_ms()));
            }
        }
        rounds.push(started.elapsed().as_nanos() as f64 / N as f64);
    }
    median(rounds)
}

fn window_of(profile: &Arc<Profile>, rows: &[&Vec<f32>], capacity: usize) -> Window {
    let w = Window::new(
        "1".into(),
        Some(profile.clone()),
        profile.features.len(),
        capacity,
    );
    for r in rows {
        w.record_rows(r);
    }
    w
}

fn main() {
    let window = arg("--window", 1000.0) as usize;
    let threshold = arg("--threshold", 0.25);
    let trials = arg("--trials", 1000.0) as usize;
    let min_rows = window.min(200);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);

    println!("## Model quality figures\n");
    println!(
        "Window {window} rows per route variant, threshold PSI {threshold}, {trials} windows per figure.\n"
    );

    // 1. Cost on the request path.
    let settings = |bytes| FeedbackSettings {
        enabled: true,
        ttl: Duration::from_secs(3600),
        max_bytes: bytes,
        redis: None,
    };
    let metrics = Arc::new(proxy::telemetry::metrics::Metrics::new());
    let quality = Quality::new(&settings(64 << 20), metrics.clone(), Arc::new(SystemWallClock));
    let cancer = profile("breast-cancer");
    let rows = heldout("breast-cancer");
    let every_one = recording_cost(&quality, &cancer, &rows[0], 1, false);
    let one_in_ten = recording_cost(&quality, &cancer, &rows[0], 10, false);
    let with_feedback = recording_cost(&quality, &cancer, &rows[0], 1, true);
    println!("| request-path cost of recording (breast-cancer, 30 features, one row) | ns per request |");
    println!("| --- | ---: |");
    println!("| drift, every request sampled (`sample_every: 1`) | {every_one:.0} |");
    println!("| drift, one request in 10 (`sample_every: 10`) | {one_in_ten:.0} |");
    println!("| drift (every request) and the feedback record (local store) | {with_feedback:.0} |");

    // 2. Memory.
    let w = window_of(
        &cancer,
        &rows.iter().cycle().take(window).collect::<Vec<_>>(),
        window,
    );
    w.record_classes(&vec![1; window]);
    let digits = profile("digits");
    let drows = heldout("digits");
    let dw = window_of(
        &digits,
        &drows.iter().cycle().take(window).collect::<Vec<_>>(),
        window,
    );
    dw.record_classes(&vec![1; window]);
    let store = proxy::quality::store::Local::new(1 << 30, Duration::from_secs(3600));
    for i in 0..10_000 {
        store.put(&format!("{i:032x}"), served(0));
    }
    println!("\n| memory | bytes |");
    println!("| --- | ---: |");
    println!(
        "| one route variant's window, breast-cancer (30 features) | {} |",
        w.bytes()
    );
    println!(
        "| one route variant's window, digits (64 features) | {} |",
        dw.bytes()
    );
    println!(
        "| one prediction waiting for its label (local store, one row, a 32-character id) | {} |",
        store.bytes() / 10_000
    );

    // 3. False alarms on in-distribution rows, and 4. requests to detect a shift.
    println!(
        "\n| dataset | in-distribution windows over the threshold (false alarms) | largest feature PSI: median, 95th percentile | shift | requests to detect (median, max of 20) |"
    );
    println!("| --- | ---: | --- | --- | --- |");
    for (name, p, rows) in [("breast-cancer", &cancer, &rows), ("digits", &digits, &drows)] {
        let mut over = 0;
        let mut figures = Vec::new();
        for _ in 0..trials {
            let pick: Vec<&Vec<f32>> = (0..window)
                .map(|_| &rows[rng.random_range(0..rows.len())])
                .collect();
            let psi = window_of(p, &pick, window)
                .figures(min_rows, threshold)
                .input_psi
                .unwrap();
            over += usize::from(psi > threshold);
            figures.push(psi);
        }
        let mut sorted = figures.clone();
        sorted.sort_by(f64::total_cmp);
        let p95 = sorted[sorted.len() * 95 / 100];
        for (shift, f) in [
            ("every feature ×1.1", 1.1f32),
            ("every feature ×1.2", 1.2),
            ("every feature ×1.5", 1.5),
        ] {
            let mut needed = Vec::new();
            let mut missed = 0;
            let cap = 4 * window;
            for _ in 0..20 {
                let start: Vec<&Vec<f32>> = (0..window)
                    .map(|_| &rows[rng.random_range(0..rows.len())])
                    .collect();
                let w = window_of(p, &start, window);
                let mut n = 0;
                let mut detected = false;
                // Checked every 10 requests (the gateway computes every few seconds).
                while n < cap && !detected {
                    for _ in 0..10 {
                        let r: Vec<f32> = rows[rng.random_range(0..rows.len())]
                            .iter()
                            .map(|x| x * f)
                            .collect();
                        w.record_rows(&r);
                    }
                    n += 10;
                    detected = w.figures(min_rows, threshold).input_psi.unwrap() > threshold;
                }
                missed += usize::from(!detected);
                needed.push(n as f64);
            }
            let max = needed.iter().cloned().fold(0.0, f64::max);
            let missed = if missed > 0 {
                format!(" (not detected within {cap} in {missed} of 20)")
            } else {
                String::new()
            };
            println!(
                "| {name} | {:.1}% ({over} of {trials}) | {:.3}, {p95:.3} | {shift} | {:.0}, {max:.0}{missed} |",
                100.0 * over as f64 / trials as f64,
                median(figures.clone()),
                median(needed),
            );
        }
    }
    let _ = metrics;
}
