//! loadgen against a tiny in-process HTTP server: it must send the rate it was asked for
//! (open loop), count non-2xx answers as errors, and refuse bad arguments.

use std::convert::Infallible;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};

/// Serves `status` on a free loopback port from a background thread; returns the port and a
/// counter of requests served.
fn serve(status: StatusCode) -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *resp.status_mut() = status;
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    (port, served)
}

/// Runs loadgen and returns the fields of its RESULT line.
fn loadgen(port: u16, rate: &str) -> std::collections::HashMap<String, f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &format!("http://127.0.0.1:{port}/v2/models/m/infer")])
        .args([
            "--rate",
            rate,
            "--connections",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().find(|l| l.starts_with("RESULT ")).expect(&stdout);
    line.split_whitespace()
        .skip(1)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn sends_the_requested_rate_and_measures_latency() {
    let (port, served) = serve(StatusCode::OK);
    let r = loadgen(port, "400");
    // 1 s measured at 400/s; the schedule is fixed, so only a stalled machine misses it.
    assert!((360.0..=440.0).contains(&r["sent"]), "{r:?}");
    assert_eq!(r["ok"], r["sent"], "{r:?}");
    assert_eq!(r["errors"], 0.0, "{r:?}");
    assert!(
        r["p50_us"] > 0.0 && r["p50_us"] <= r["p99_us"] && r["p99_us"] <= r["max_us"],
        "{r:?}"
    );
    // The warm-up's requests reach the server too, but are not counted.
    assert!(served.load(Ordering::Relaxed) as f64 >= r["sent"]);
}

#[test]
fn high_rates_are_paced_without_the_timer_and_still_on_schedule() {
    let (port, served) = serve(StatusCode::OK);
    // 25,000/s: a 40 µs interval, below SPIN, so the pacer yields instead of arming the timer.
    let r = loadgen(port, "25000");
    assert!((22_500.0..=27_500.0).contains(&r["sent"]), "{r:?}");
    assert_eq!(r["ok"], r["sent"], "{r:?}");
    assert!(served.load(Ordering::Relaxed) as f64 >= r["sent"]);
}

#[test]
fn non_2xx_answers_are_errors_and_count_as_the_slowest() {
    let (port, _) = serve(StatusCode::SERVICE_UNAVAILABLE);
    let r = loadgen(port, "200");
    assert!(r["sent"] > 0.0, "{r:?}");
    assert_eq!(r["ok"], 0.0, "{r:?}");
    assert_eq!(r["errors"], r["sent"], "{r:?}");
    // Fast refusals count as the slowest answers, not as fast ones.
    assert_eq!(r["p50_us"], r["max_us"], "{r:?}");
    assert!(r["p50_us"] >= 59_000_000.0, "{r:?}");
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", "http://127.0.0.1:1/", "--rate", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate and --connections must be positive"));
}

/// `--grpc` against a real gRPC server (inference-server's, over the bundled models): calls
/// succeed only with grpc-status 0, so a call refused in its trailers is an error.
#[test]
fn grpc_calls_count_their_grpc_status() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let models = root.join("models");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let repo = inference::ModelRepository::load(&models, &inference::PoolConfig::default()).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            inference::grpc::GrpcServer::new(Arc::new(repo), Default::default())
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    let run = |model: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--url", &format!("http://127.0.0.1:{port}")])
            .args(["--grpc", model, "--body"])
            .arg(root.join("models/example.json"))
            .args([
                "--rate",
                "200",
                "--connections",
                "2",
                "--duration",
                "1",
                "--warmup",
                "0.5",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout
            .lines()
            .find(|l| l.starts_with("RESULT "))
            .expect(&stdout)
            .to_string()
    };
    let ok = run("breast-cancer");
    assert!(ok.contains(" errors=0 ") && !ok.contains(" ok=0 "), "{ok}");
    let refused = run("no-such-model");
    assert!(
        refused.contains(" ok=0 ") && !refused.contains(" errors=0 "),
        "{refused}"
    );
}
