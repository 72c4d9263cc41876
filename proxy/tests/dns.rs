//! Remote pools follow DNS: the `gateway` binary, in a mount namespace of its own whose
//! `/etc/hosts` the test rewrites (the system resolver reads it on every lookup), with a pool
//! whose endpoint is a name. Two model servers that take 300 ms per request listen on
//! 127.0.0.2 and 127.0.0.3 at the same port, as two pods behind a headless Service do.
//!
//! - The name does not resolve at first: the gateway still starts, and is not ready.
//! - It resolves to one address: ready, requests go there.
//! - It gains a second: requests spread over both.
//! - It loses the first while requests are in flight on it: none fails, and no new request
//!   goes there.
//!
//! Needs root (unshare, mount), as CI has; it fails, not skips, without it.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

const NAME: &str = "models.gateway-test";

fn body() -> String {
    r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[0.5]}]}"#.to_string()
}

/// Rewrites the hosts file in place: the bind mount follows the inode, not the name.
fn hosts(file: &std::path::Path, addresses: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for a in addresses {
        text.push_str(&format!("{a} {NAME}\n"));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

async fn admin_json(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let path = path.to_string();
    // The client blocks on a runtime of its own.
    let (status, body) = tokio::task::spawn_blocking(move || {
        proxy::ops::client::call(&admin.to_string(), "GET", &path, None, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .unwrap_or((0, String::new()));
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The pool's addresses and whether each is healthy, from `/admin/config`.
async fn addresses(admin: SocketAddr) -> Vec<(String, bool)> {
    let (_, v) = admin_json(admin, "/admin/config").await;
    let pool = &v["pools"]["models"];
    pool["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["address"].as_str().unwrap_or_default().to_string(),
                        e["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the pool's addresses are exactly `want`, all healthy.
async fn wait_for_addresses(admin: SocketAddr, want: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = addresses(admin).await;
        let mut got: Vec<String> = now.iter().filter(|(_, ok)| *ok).map(|(a, _)| a.clone()).collect();
        got.sort();
        if got == want && now.len() == want.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pool's addresses are {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When each request to `upstream` began and ended, from the access log (a line is written at
/// the end; less its `ms=`, when the request began).
fn requests_to(log: &std::path::Path, upstream: &str) -> Vec<(SystemTime, SystemTime)> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|l| l.contains(&format!("upstream=\"{upstream}\"")))
        .map(|l| {
            let ended = humantime::parse_rfc3339(l.split_whitespace().next().unwrap_or_default()).unwrap();
            let ms: f64 = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .expect("the access log has ms=");
            (ended - Duration::from_secs_f64(ms / 1e3), ended)
        })
        .collect()
}

/// How many requests to `upstream` began at or after `since`.
fn begun_since(log: &std::path::Path, upstream: &str, since: SystemTime) -> usize {
    requests_to(log, upstream)
        .iter()
        .filter(|(began, _)| *began >= since)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_follows_its_name_without_a_failed_request() {
    let port = free_port();
    let (a, b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let _up_a = FakeUpstream::start_at(Misbehaviour::Slow(Duration::from_millis(300)), &a).await;
    let _up_b = FakeUpstream::start_at(Misbehaviour::Slow(Duration::from_millis(300)), &b).await;

    let dir = temp_dir("dns");
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, "").unwrap();
    hosts(&hosts_file, &[]);
    let (config, https, admin) = binary_config(
        &dir,
        "threads: 2, access_log: true",
        &format!(
            "pools:\n  models: {{http: {{endpoints: [\"{NAME}:{port}\"], model: slow, version: 1, timeout_ms: 5000, \
             dns_refresh_ms: 200, health_check: {{interval_ms: 100}}}}}}\n\
             routes:\n  - model: slow\n    stable: models\n"
        ),
    );
    let log = dir.join("gateway.log");
    // The gateway sees `hosts_file` as /etc/hosts, and nothing else changes.
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/hosts && exec \"$2\" run --config \"$3\"")
        .arg("sh")
        .arg(&hosts_file)
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .arg(&config);
    let (child, printed) = until_serving(command, Stdio::from(std::fs::File::create(&log).unwrap()));
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .expect("the dev key is printed")
        .to_string();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    // No address yet: serving, not ready.
    let (status, ready) = admin_json(admin_addr, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(addresses(admin_addr).await.is_empty());

    // One address: ready, within a few lookups.
    hosts(&hosts_file, &["127.0.0.2"]);
    wait_for_addresses(admin_addr, std::slice::from_ref(&a), Duration::from_secs(5)).await;
    assert_eq!(admin_json(admin_addr, "/health/ready").await.0, 200);

    // Clients keep 12 requests in flight from here to the end.
    let client = Arc::new((
        format!("127.0.0.1:{https}").parse::<SocketAddr>().unwrap(),
        client_tls(&dir.join("certs/ca.crt")),
        key,
    ));
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut clients = Vec::new();
    for _ in 0..12 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = connect(client.0, &client.1, Proto::H1).await;
            while !stop.load(Ordering::Relaxed) {
                let headers = [
                    ("x-api-key", client.2.as_str()),
                    ("content-type", "application/json"),
                ];
                match conn
                    .try_send("POST", "/v2/models/slow/infer", &headers, body())
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failed
                        .lock()
                        .unwrap()
                        .push(format!("{}: {}", r.status, r.error())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    // A second address: both take requests.
    hosts(&hosts_file, &["127.0.0.2", "127.0.0.3"]);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    wait_for_addresses(admin_addr, &both, Duration::from_secs(5)).await;
    let mark = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (to_a, to_b) = (begun_since(&log, &a, mark), begun_since(&log, &b, mark));
    assert!(
        to_a > 5 && to_b > 5,
        "with both addresses: {to_a} to {a}, {to_b} to {b}"
    );

    // The first goes away with requests in flight on it (12 clients, 300 ms each).
    hosts(&hosts_file, &["127.0.0.3"]);
    let left = SystemTime::now();
    wait_for_addresses(admin_addr, std::slice::from_ref(&b), Duration::from_secs(5)).await;
    // Requests already on their way to it finish there; none that begins from now on goes there.
    let mark = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (to_a, to_b) = (begun_since(&log, &a, mark), begun_since(&log, &b, mark));
    assert_eq!(
        to_a, 0,
        "{to_a} requests that began after {a} left the name went there"
    );
    assert!(to_b > 5, "{to_b} requests to {b}");
    // Requests were on their way to it when it left (and, below, none failed).
    let in_flight = requests_to(&log, &a)
        .iter()
        .filter(|(began, ended)| *began < left && *ended > left)
        .count();
    assert!(
        in_flight > 0,
        "no request was in flight on {a} when it left the name"
    );

    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{ok} answered, {} failed; {in_flight} in flight on {a} when it left",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(terminate(child).success());
}
