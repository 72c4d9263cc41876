//! Memory under a flood: one API key sends the largest requests the gateway takes, from many
//! connections at once, while another key sends ordinary ones. The gateway (the real binary,
//! measured from the outside) holds its resident memory under a stated bound — the in-flight
//! budget turns the flood's excess into 503s instead of growth — and answers the other key
//! all the while.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// Above its resident memory before the flood, the gateway may grow by at most this: the one
/// key's share of the in-flight budget (64 MiB by default), what the allocator keeps around
/// it, and each connection's buffers. Measured: see the test's output.
const BOUND_MIB: u64 = 256;

/// `(VmRSS, VmHWM)` of a process, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the process's high-water mark to its current resident memory (Linux: writing 5 to
/// clear_refs), so that the peak of the flood alone is read afterwards.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_maximal_requests_from_one_key_holds_memory_and_others_are_answered() {
    let dir = temp_dir("memory");
    let (config, https, _) = binary_config(
        &dir,
        "threads: 2, access_log: false",
        "pools:\n  cancer: {local: {model: breast-cancer, version: 1, max_rows: 100000}}\n\
         routes:\n  - model: breast-cancer\n    stable: cancer\n",
    );
    let (child, printed) = run_until_serving(&config);
    // Killed if the test fails before it stops the gateway itself.
    struct Reaper(u32);
    impl Drop for Reaper {
        fn drop(&mut self) {
            // SAFETY: a signal to the child this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let reaper = Reaper(child.id());
    let flooder = printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .unwrap()
        .to_string();
    let out = gateway()
        .args(["keys", "add", "--tenant", "calm", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let calm = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let tls = client_tls(&dir.join("certs/ca.crt"));
    let pid = child.id();

    // The largest request: 4 MiB of JSON rows (about 17,000 rows of 30 features).
    let row = serde_json::to_string(&testdata_rows().0[0]).unwrap();
    let rows = (4 << 20) / (row.len() + 1) - 8;
    let big = format!(
        r#"{{"inputs":[{{"name":"input","shape":[{rows},30],"datatype":"FP32","data":[{}]}}]}}"#,
        vec![row.as_str(); rows].join(",")
    );
    assert!(big.len() <= 4 << 20, "{}", big.len());
    let big = bytes::Bytes::from(big);
    let path = "/v2/models/breast-cancer/infer";

    // Warm: one of each, so that the baseline holds what any request needs.
    let mut c = connect(addr, &tls, Proto::H1).await;
    assert_eq!(
        c.send("POST", path, &[("x-api-key", flooder.as_str())], big.clone())
            .await
            .status,
        200
    );
    // The key added after the start applies once the watcher has seen the keys file.
    let added = Instant::now();
    while c
        .send("POST", path, &[("x-api-key", calm.as_str())], example())
        .await
        .status
        != 200
    {
        assert!(
            added.elapsed() < Duration::from_secs(2),
            "the new key never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (baseline, _) = memory(pid);
    reset_peak(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicUsize; 4]> = Arc::new(Default::default()); // flood 200, 503, other, calm failed
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (stop, counts, tls, big, key) = (
            stop.clone(),
            counts.clone(),
            tls.clone(),
            big.clone(),
            flooder.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = try_connect(addr, &tls, Proto::H1).await else {
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    match c
                        .try_send("POST", path, &[("x-api-key", key.as_str())], big.clone())
                        .await
                    {
                        Ok(r) if r.status == 200 => counts[0].fetch_add(1, Ordering::Relaxed),
                        Ok(r) if r.status == 503 => counts[1].fetch_add(1, Ordering::Relaxed),
                        Ok(_) => counts[2].fetch_add(1, Ordering::Relaxed),
                        Err(_) => break,
                    };
                }
            }
        }));
    }
    let calm_task = {
        let (stop, counts, tls, key) = (stop.clone(), counts.clone(), tls.clone(), calm.clone());
        tokio::spawn(async move {
            let mut answered = 0;
            let mut slowest = Duration::ZERO;
            let mut c = connect(addr, &tls, Proto::H1).await;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let r = c
                    .try_send("POST", path, &[("x-api-key", key.as_str())], example())
                    .await;
                slowest = slowest.max(sent.elapsed());
                match r {
                    Ok(r) if r.status == 200 => answered += 1,
                    other => {
                        eprintln!("the calm key got {:?}", other.map(|r| (r.status, r.body)));
                        counts[3].fetch_add(1, Ordering::Relaxed);
                        c = connect(addr, &tls, Proto::H1).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (answered, slowest)
        })
    };
    let started = Instant::now();
    let mut peak_seen = 0;
    while started.elapsed() < Duration::from_secs(8) {
        peak_seen = peak_seen.max(memory(pid).0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (calm_answered, calm_slowest) = calm_task.await.unwrap();
    for t in tasks {
        t.abort();
    }
    let (_, hwm) = memory(pid);
    let peak = hwm.max(peak_seen);
    let [ok, busy, other, calm_failed] = [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    eprintln!(
        "flood: {ok} answered, {busy} refused 503 (budget), {other} other; calm key: {calm_answered} answered (slowest {calm_slowest:?}), {calm_failed} not; \
         RSS {} MiB before, peak {} MiB (+{} MiB, bound +{BOUND_MIB} MiB)",
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024
    );
    terminate(child);
    // Stopped and reaped: its pid is no longer its own.
    std::mem::forget(reaper);
    assert!(ok > 0, "the flood was served at all");
    assert!(busy > 0, "the budget held the flood back");
    assert_eq!(other, 0);
    assert_eq!(calm_failed, 0, "the other key was answered throughout");
    // The flood shares the model's worker with it: slower, never refused.
    assert!(calm_answered >= 5, "{calm_answered}");
    assert!(
        peak.saturating_sub(baseline) <= BOUND_MIB * 1024,
        "peak RSS {} MiB over a baseline of {} MiB",
        peak / 1024,
        baseline / 1024
    );
    let _ = child_cleanup(&dir);
}

fn child_cleanup(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(dir)
}
