//! Shadows must not touch the primary: no errors, and latencies close to those without
//! shadows, measured in this one run under the same load, in two cases:
//!
//! - remote shadows that hang, fail or reset their connections, at 2,000 requests/s;
//! - a local shadow (the random forest) copied every request at about half of the load this
//!   machine can carry with no shadow: the case that matters when a model owner asks for
//!   "shadow 100%", where the shadow competes for the same cores.
//!
//! The method, not retries, makes it robust against this shared machine's noise: the two
//! routes (one plain, one shadowed, on the same stable pool) take turns in 600 block pairs of
//! 50 requests at a fixed rate, either first in turn, so that noise lands on both. The
//! verdict is on three ratios, each the median over the 600 pairs of the shadowed block's
//! figure over the plain block's: a block's p50, its p90 (5th-slowest request) and its tail
//! (second-slowest, with the block's one worst left out). The limits state their margin; one
//! ratio over its limit fails the test. A shadow that costs the primary anything on most
//! requests moves most pairs' ratios; a neighbour who takes the cores for a while slows both
//! blocks of the pairs it lands on (a pair lasts some 50 ms) and moves few ratios. Pooled
//! quantiles are printed, not judged: on these machines they are set by where a neighbour's
//! bursts land (five runs of the local case at one commit gave pooled p99 ratios from 0.38 to
//! 2.26; a CI run whose pooled p90 was 5 ms against a p50 of 0.8 ms gave a pooled p90 ratio of
//! 1.25 and a paired tail ratio of 1.02), so the p99 target lives in
//! `loadtests/bench_shadow.sh`, whose client is another process, measured for longer. Its own
//! test binary, so that no other test shares the machine meanwhile; its two tests take turns.

mod common;

// The gateway under test allocates as the shipped binary does (proxy/src/main.rs): how the
// allocator locks between the client path and the idle-priority shadow thread is part of what
// a shadow can cost the primary.
#[global_allocator]
static GLOBAL: inference::alloc::MiMalloc = inference::alloc::MiMalloc;

use std::time::{Duration, Instant};

use common::*;

/// The two tests measure one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connections per route.
const N_CONNS: usize = 10;
/// Requests per block, block pairs.
const BLOCK: usize = 50;
const PAIRS: usize = 600;

/// Fixed-rate load (open loop) on one route over the
/// given HTTP/2 connections; returns every latency and the connections.
async fn load(
    conns: Vec<Connection>,
    key: &str,
    route: &str,
    rate: f64,
    count: usize,
) -> (Vec<Duration>, Vec<Connection>) {
    let n = conns.len();
    let per_conn = count / n;
    let interval = Duration::from_secs_f64(n as f64 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let key = key.to_string();
        let path = format!("/v2/models/{route}/infer");
        let offset = interval.mul_f64(c as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_conn);
            for i in 0..per_conn {
                let due = start + offset + interval * i as u32;
                // From the intended time when the previous answer made this request late
                // (the gateway's delay counts); from the timer's wake-up otherwise, since
                // tokio's timer fires up to 1 ms late, which is the client's noise, not the
                // gateway's.
                let begin = if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                };
                let r = conn
                    .send("POST", &path, &[("x-api-key", key.as_str())], example())
                    .await;
                assert_eq!(r.status, 200, "the primary failed: {:?}", r.body);
                out.push(begin.elapsed());
            }
            (out, conn)
        }));
    }
    let (mut all, mut back) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, conn) = t.await.unwrap();
        all.extend(lat);
        back.push(conn);
    }
    (all, back)
}

/// As many requests as the connections carry back to back for `secs` on `route`: this
/// setup's maximum, in requests/s.
async fn closed_loop(conns: Vec<Connection>, key: &str, route: &str, secs: f64) -> (f64, Vec<Connection>) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (key, path) = (key.to_string(), format!("/v2/models/{route}/infer"));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let r = conn
                    .send("POST", &path, &[("x-api-key", key.as_str())], example())
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
                n += 1;
            }
            (n, conn)
        }));
    }
    let (mut total, mut back) = (0, Vec::new());
    for t in tasks {
        let (n, conn) = t.await.unwrap();
        total += n;
        back.push(conn);
    }
    (total as f64 / secs, back)
}

/// Fails unless every paired ratio (block p50, p90, tail) is within `limit`.
fn within(ratios: [f64; 3], limit: f64, case: &str) {
    for (name, r) in ["block p50", "block p90", "block tail"].iter().zip(ratios) {
        assert!(
            r <= limit,
            "median {name} ratio {r:.3} over {limit:.2} {case} (block p50, p90, tail: {ratios:.3?})"
        );
    }
}

/// The two routes' connections.
struct Pair {
    plain: Vec<Connection>,
    shadowed: Vec<Connection>,
}

impl Pair {
    async fn open(g: &Gateway) -> Pair {
        let mut pair = Pair {
            plain: Vec::new(),
            shadowed: Vec::new(),
        };
        for _ in 0..N_CONNS {
            pair.plain.push(connect(g.https, &g.tls, Proto::H2).await);
            pair.shadowed.push(connect(g.https, &g.tls, Proto::H2).await);
        }
        pair
    }

    /// One block on one route.
    async fn block(&mut self, key: &str, shadowed: bool, rate: f64) -> Vec<Duration> {
        let (conns, route) = if shadowed {
            (&mut self.shadowed, "shadowed")
        } else {
            (&mut self.plain, "plain")
        };
        let (lat, back) = load(std::mem::take(conns), key, route, rate, BLOCK).await;
        *conns = back;
        lat
    }

    /// `PAIRS` block pairs, either route first in turn; every pair's latencies (plain,
    /// shadowed).
    async fn pairs(&mut self, key: &str, rate: f64) -> Vec<(Vec<Duration>, Vec<Duration>)> {
        let mut out = Vec::with_capacity(PAIRS);
        for b in 0..PAIRS {
            let shadow_first = b % 2 == 0;
            let first = self.block(key, shadow_first, rate).await;
            let second = self.block(key, !shadow_first, rate).await;
            out.push(if shadow_first {
                (second, first)
            } else {
                (first, second)
            });
        }
        out
    }

    /// The ratios the verdict is on (over block pairs, the median ratio of the blocks' p50,
    /// p90 and tail; see the module comment), printed with the pooled quantiles' ratios for
    /// the reader.
    async fn ratios(&mut self, key: &str, rate: f64, case: &str) -> [f64; 3] {
        // Each block sorted once: the per-block figures below are its order statistics.
        let pairs: Vec<(Vec<Duration>, Vec<Duration>)> = (self.pairs(key, rate).await)
            .into_iter()
            .map(|(mut p, mut s)| {
                p.sort();
                s.sort();
                (p, s)
            })
            .collect();
        let pooled = |shadowed: bool| {
            let mut v: Vec<Duration> = pairs
                .iter()
                .flat_map(|(p, s)| if shadowed { s } else { p })
                .copied()
                .collect();
            v.sort();
            v
        };
        let (plain, shadowed) = (pooled(false), pooled(true));
        let r = |q: f64| quantile(&shadowed, q).as_secs_f64() / quantile(&plain, q).as_secs_f64();
        // A sorted block's `k`th slowest request, in seconds.
        let slowest = |v: &[Duration], k: usize| v[v.len() - k].as_secs_f64();
        // Over pairs, the median of (shadowed block's `k`th slowest / plain block's).
        let paired = |k: usize| median(pairs.iter().map(|(p, s)| slowest(s, k) / slowest(p, k)).collect());
        let (p50, p90, tail) = (paired(BLOCK / 2), paired(BLOCK / 10), paired(2));
        eprintln!(
            "{case}: pooled p50 {:?} / {:?} ({:.3}), p90 {:?} / {:?} ({:.3}), p99 {:?} / {:?} ({:.3}); \
             median over {PAIRS} block pairs of the shadowed/plain ratio of the block's p50 {p50:.3}, \
             p90 {p90:.3}, tail (2nd slowest of {BLOCK}) {tail:.3}",
            quantile(&plain, 0.5),
            quantile(&shadowed, 0.5),
            r(0.5),
            quantile(&plain, 0.9),
            quantile(&shadowed, 0.9),
            r(0.9),
            quantile(&plain, 0.99),
            quantile(&shadowed, 0.99),
            r(0.99),
        );
        [p50, p90, tail]
    }
}

/// The `q` quantile of sorted latencies.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
/// Sum of the metric lines that start with `prefix`.
fn value(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_remote_shadows_do_not_touch_the_primary() {
    let _turn = SERIAL.lock().await;
    let sleepy = FakeUpstream::start(Misbehaviour::Sleep(Duration::from_secs(5))).await;
    let failing = FakeUpstream::start(Misbehaviour::Fail).await;
    let resetting = FakeUpstream::start(Misbehaviour::Reset).await;
    let remote = |name: &str, addr: std::net::SocketAddr| {
        format!(
            "  {name}: {{http: {{endpoints: [\"{addr}\"], model: breast-cancer, version: 1, timeout_ms: 10000, health_check: {{interval_ms: 200}}}}}}\n"
        )
    };
    // Two routes on the same stable pool: one plain, one copying every request to all three
    // bad shadows (which are given up on after 1 s). Predictions wait for feedback labels in
    // a store of 64 MiB by default, which this run's 60,000 would fill by some 40 MB: 1 MiB
    // here, full before the measurement, so that the memory check below sees the shadows'.
    let g = start(&format!(
        "{LOCAL_POOLS}{}{}{}\
         shadow: {{max_in_flight: 128, timeout_ms: 1000}}\n\
         quality: {{feedback: {{max_bytes: 1048576}}}}\n\
         routes:\n  - model: plain\n    stable: cancer-v1\n  - model: shadowed\n    stable: cancer-v1\n    shadows:\n      - {{pool: sleepy, percent: 100}}\n      - {{pool: failing, percent: 100}}\n      - {{pool: resetting, percent: 100}}\n",
        remote("sleepy", sleepy.addr),
        remote("failing", failing.addr),
        remote("resetting", resetting.addr),
    ));
    const RATE: f64 = 2000.0;
    let key = g.keys.batch.clone();
    let mut pair = Pair::open(&g).await;
    for shadowed in [false, true] {
        for _ in 0..10 {
            pair.block(&key, shadowed, RATE).await;
        }
    }
    let rss_before = rss_kib();
    let ratios = pair
        .ratios(&key, RATE, "three bad remote shadows at 2,000/s")
        .await;
    let rss_after = rss_kib();
    eprintln!("RSS {rss_before} -> {rss_after} KiB");
    // The limit: issue 21's 1.15, as for the local shadow. Over 360 pairs, twelve runs on a
    // noisy machine (five as it was, six beside two busy loops, one beside a release build)
    // gave paired ratios from 0.93 to 1.145 (the highest, block p90, beside the build);
    // 600 pairs narrow that spread, and a shadow that costs the primary 15% on most requests
    // still fails.
    within(ratios, 1.15, "with bad remote shadows");

    let (_, metrics) = admin_get(&g, "/metrics").await;
    // Every bad shadow was reached and failed; the sleeper filled the route's slots, so
    // copies were dropped (counted) rather than queued.
    for shadow in ["sleepy", "failing", "resetting"] {
        let errors = value(
            &metrics,
            &format!("gateway_shadow_errors_total{{route=\"shadowed\",shadow=\"{shadow}\"}}"),
        );
        assert!(errors > 0, "{shadow} never failed:\n{metrics}");
    }
    let dropped = value(
        &metrics,
        "gateway_shadow_dropped_total{reason=\"in_flight_cap\",route=\"shadowed\"",
    );
    assert!(dropped > 0, "{metrics}");
    assert_eq!(value(&metrics, "gateway_errors_total"), 0, "{metrics}");
    // Memory stays flat at the cap: nothing waits in a queue.
    assert!(
        rss_after < rss_before + 30 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// The cores this thread may run on.
fn my_cores() -> Vec<usize> {
    // SAFETY: fills a cpu_set_t on this stack for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Keeps the calling thread (and the threads it starts from now on) on `core`.
fn pin_to(core: usize) {
    pin_thread(0, core);
}

/// Keeps thread `tid` of this process (0: the calling one) on `core`. A thread that has
/// ended since it was listed is left alone.
fn pin_thread(tid: libc::pid_t, core: usize) {
    // SAFETY: fills a cpu_set_t on this stack and sets that thread's affinity.
    let done = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    let err = std::io::Error::last_os_error();
    assert!(
        done == 0 || (tid != 0 && err.raw_os_error() == Some(libc::ESRCH)),
        "thread {tid} to core {core}: {err}"
    );
}

/// The threads of this process.
fn threads() -> std::collections::HashSet<libc::pid_t> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The gateway on one core and this test's client on another, as in
/// `loadtests/bench_shadow.sh` (with one core, both share it): the client is another machine in
/// production, and on shared cores its own threads' share of the CPU is part of what the
/// ratios move with. This split also tells apart a design that sheds its cost onto the client
/// path: copies run between requests on the I/O threads gave block p50 ratios of 1.21 with
/// shared cores and 1.34 split (`docs/performance.md`), where the idle-priority shadow thread
/// gave 1.03 and 1.07 split (two runs, all copies compared). Split, the gateway's two I/O
/// threads share one core, so `shadow.local_copies: auto` runs the copies on the shadow
/// thread; with one I/O thread per core it runs them in the I/O threads' quiet turns.
#[test]
fn a_local_shadow_at_half_load_does_not_touch_the_primary() {
    let cores = my_cores();
    let split = cores.len() >= 2;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if split {
        let client = cores[1];
        builder.on_thread_start(move || pin_to(client));
    }
    // The gateway starts on all the cores and its threads are then moved to the server core:
    // the copies' CPU budget counts the process's CPU against the cores the gateway started
    // on, and this test's client is part of the process. Started on the server core alone,
    // the budget counted the client's CPU (on the other core) against that one core and shed
    // copies for it: 80–97% compared on a slower host (docs/shadows.md). The production
    // gateway has no client in its process. `local_copies: shadow_thread` is what `auto`
    // chose when the gateway started on one core for its two I/O threads.
    // Held from before the gateway starts: the other case's threads, which would start
    // meanwhile, are not among those moved below.
    let turn = SERIAL.blocking_lock();
    let before = threads();
    let g = start(
        "rate_limits: {tiers: {batch: {per_second: 10000000, burst: 10000000}}}\n\
         shadow: {max_in_flight: 4096, local_copies: shadow_thread}\n\
         pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\n  cancer-v3: {local: {model: breast-cancer, version: 3}}\n\
         routes:\n  - model: plain\n    stable: cancer-v1\n  - model: shadowed\n    stable: cancer-v1\n    shadows: [{pool: cancer-v3, percent: 100}]\n",
    );
    if split {
        // The threads the gateway started; those it starts later inherit their affinity.
        for tid in threads().difference(&before) {
            pin_thread(*tid, cores[0]);
        }
        pin_to(cores[1]);
    }
    builder.build().unwrap().block_on(local_shadow_at_half_load(g));
    drop(turn);
}

async fn local_shadow_at_half_load(g: Gateway) {
    // The in-flight cap (4,096 above) bounds what copies for a slow shadow hold (the remote
    // case crosses it); at 12,000 requests/s a local shadow has more than the default 64
    // copies in flight, which the cap would drop before the CPU budget is asked (a CI run:
    // 2,343 of 18,000). Here it is out of the way: this case is about the CPU.
    let key = g.keys.batch.clone();
    let mut pair = Pair::open(&g).await;
    // This setup's maximum without a shadow, after a warm-up; the load is half of it.
    // The best of three rounds: a neighbour's burst lowers a round's figure (a run measured
    // 1,096/s where the others measured 10,400 to 11,700), never raises it.
    let (_, mut c) = closed_loop(std::mem::take(&mut pair.plain), &key, "plain", 0.5).await;
    let mut max = 0f64;
    for _ in 0..3 {
        let (round, back) = closed_loop(c, &key, "plain", 1.0).await;
        (max, c) = (max.max(round), back);
    }
    pair.plain = c;
    let rate = (max / 2.0).round();
    eprintln!("maximum without a shadow: {max:.0} requests/s; load: {rate} requests/s");
    for shadowed in [false, true] {
        for _ in 0..10 {
            pair.block(&key, shadowed, rate).await;
        }
    }
    let (_, before) = admin_get(&g, "/metrics").await;
    let ratios = pair
        .ratios(&key, rate, &format!("a local shadow at 100%, {rate}/s"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // copies in flight finish
    let (_, after) = admin_get(&g, "/metrics").await;
    // The limit: the benchmark's target of 1.15 (paired ratios from 0.91 to 1.13 in five runs
    // on a noisy machine whose p50 reached 3.3 ms, 1.13 in the noisiest).
    within(ratios, 1.15, "with a local shadow at half load");
    let compared = |m: &str| {
        value(m, "gateway_shadow_agreement_total{") + value(m, "gateway_shadow_disagreement_total{")
    };
    let copies = compared(&after) - compared(&before);
    let sent = (PAIRS * BLOCK) as u64;
    eprintln!(
        "copies compared: {copies} of {sent}; dropped: {}",
        value(&after, "gateway_shadow_dropped_total") - value(&before, "gateway_shadow_dropped_total")
    );
    // At half load there is room for the shadow: most copies are compared.
    assert!(
        copies * 100 >= sent * 90,
        "{copies} of {sent} copies compared:\n{after}"
    );
    assert_eq!(value(&after, "gateway_errors_total"), 0, "{after}");
}
