//! Per-key limits shared across replicas through a real `redis-server` (started here, on a
//! free port, for each test): two gateways admit together what one would, and when Redis
//! stops mid-test the configured policy holds — fail open (each replica's local limits) or
//! fail closed (503) — and shared limiting resumes when it is back.

use std::time::{Duration, Instant};

use crate::common::*;

fn body(redis: &Redis, prefix: &str, per_second: u32, burst: u32, policy: &str) -> String {
    format!(
        "rate_limits:\n  default: {{per_second: {per_second}, burst: {burst}}}\n  \
         tiers: {{batch: {{per_second: 1000, burst: 1000}}}}\n  \
         redis: {{url: \"{}\", prefix: {prefix}, timeout_ms: 200, on_unavailable: {policy}}}\n\
         {LOCAL_POOLS}routes:\n  - {{model: breast-cancer, stable: cancer-v1}}\n",
        redis.url()
    )
}

/// Makes `b` accept `a`'s keys (the same tenants on every replica, as a shared Secret gives).
async fn share_keys(a: &Gateway, b: &Gateway) {
    std::fs::copy(a.dir.join("api-keys.yaml"), b.dir.join("api-keys.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A key file reload: `b` now knows `a`'s dev key (any answer but 401).
        let r = infer(b, Proto::H1, &a.keys.dev, "breast-cancer", &[]).await;
        if r.status != 401 {
            return;
        }
        assert!(Instant::now() < deadline, "gateway b never loaded a's keys");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts of statuses from `clients` keep-alive connections per gateway, sending with `key`
/// until `until`.
async fn hammer(
    gateways: &[&Gateway],
    key: &str,
    clients: usize,
    until: Instant,
) -> (Vec<u16>, Instant, Instant) {
    let mut tasks = tokio::task::JoinSet::new();
    for g in gateways {
        for _ in 0..clients {
            let (addr, tls, key) = (g.https, g.tls.clone(), key.to_string());
            tasks.spawn(async move {
                let mut conn = connect(addr, &tls, Proto::H1).await;
                let mut seen = Vec::new();
                let mut first = None;
                let mut last = Instant::now();
                while Instant::now() < until {
                    let sent = Instant::now();
                    first.get_or_insert(sent);
                    let r = conn
                        .send(
                            "POST",
                            "/v2/models/breast-cancer/infer",
                            &[("x-api-key", &key), ("content-type", "application/json")],
                            example(),
                        )
                        .await;
                    last = sent;
                    seen.push(r.status);
                    // A refusal is sent before the body is read, so the gateway closes that
                    // connection; pace the loop a little so the run measures the limiter,
                    // not how fast 429s can be made.
                    if r.status != 200 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        conn = connect(addr, &tls, Proto::H1).await;
                    }
                }
                (seen, first.unwrap(), last)
            });
        }
    }
    let mut statuses = Vec::new();
    let (mut first, mut last) = (until, Instant::now() - Duration::from_secs(3600));
    while let Some(r) = tasks.join_next().await {
        let (seen, f, l) = r.unwrap();
        statuses.extend(seen);
        first = first.min(f);
        last = last.max(l);
    }
    (statuses, first, last)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_one_redis_admit_rate_times_time_plus_burst() {
    let redis = Redis::start();
    let (rate, burst) = (100u32, 50u32);
    let a = start(&body(&redis, "fleet", rate, burst, "open"));
    let b = start(&body(&redis, "fleet", rate, burst, "open"));
    share_keys(&a, &b).await;
    // share_keys spent some of the key's allowance; start from a full one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (statuses, first, last) =
        hammer(&[&a, &b], &a.keys.dev, 4, Instant::now() + Duration::from_secs(5)).await;
    let admitted = count(&statuses, 200);
    let elapsed = (last - first).as_secs_f64();
    let expected = rate as f64 * elapsed + burst as f64;
    let total = statuses.len();
    eprintln!(
        "two gateways, one key, {total} requests in {elapsed:.2} s: {admitted} admitted, expected {expected:.0} \
         (rate {rate}/s × {elapsed:.2} s + burst {burst}); others: {:?}",
        statuses
            .iter()
            .filter(|s| **s != 200 && **s != 429)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(&statuses, 200) + count(&statuses, 429),
        total,
        "only 200 and 429"
    );
    assert!(
        total as f64 > expected * 3.0,
        "the clients must offer well over the limit: {total} offered, {expected:.0} allowed"
    );
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.02,
        "{admitted} admitted across two replicas, expected {expected:.0} ± 2% (off by {:.1}%)",
        error * 100.0
    );
    // The state in Redis is named by a digest prefix, never by the key.
    let keys = redis.keys("fleet");
    assert_eq!(keys.len(), 1, "one state per key: {keys:?}");
    assert!(!keys[0].contains(&a.keys.dev));
}

/// Sends `n` requests with `key` on one connection, as fast as they are answered.
async fn burst_of(g: &Gateway, key: &str, n: usize) -> Vec<u16> {
    let mut conn = connect(g.https, &g.tls, Proto::H1).await;
    let mut out = Vec::new();
    for _ in 0..n {
        let r = conn
            .send(
                "POST",
                "/v2/models/breast-cancer/infer",
                &[("x-api-key", key), ("content-type", "application/json")],
                example(),
            )
            .await;
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"), "503 says when to retry");
            assert!(r.error().contains("rate limiter unavailable"), "{}", r.error());
        }
        out.push(r.status);
        // Refusals close the connection (they are sent before the body is read).
        if r.status != 200 {
            conn = connect(g.https, &g.tls, Proto::H1).await;
        }
    }
    out
}

/// Waits until shared limiting works again after Redis came back: a probe reconnects, the
/// gauge says so, and a request's state lands in Redis.
async fn until_shared_again(g: &Gateway, redis: &Redis, prefix: &str) {
    let back = Instant::now();
    loop {
        // Any keyed request may be the probe (the batch key has quota to spare).
        burst_of(g, &g.keys.batch, 1).await;
        if metric(g, "gateway_ratelimit_redis_up").await == 1.0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "shared limiting did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "shared limiting resumed {:?} after Redis restarted",
        back.elapsed()
    );
    // The dev key's state is in Redis again. It expires when it would equal a fresh one: 1/rate
    // after a lone request, 20 ms at 50/s, less than starting redis-cli to look can take on a
    // busy machine (the test failed so). Eight requests keep it eight times as long.
    let status = burst_of(g, &g.keys.dev, 8).await;
    assert_eq!(redis.keys(prefix).len(), 1, "after {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_fails_open_to_local_limits() {
    let mut redis = Redis::start();
    let g = start(&body(&redis, "open", 5, 10, "open"));
    let shared = burst_of(&g, &g.keys.dev, 15).await;
    assert_eq!(count(&shared, 200), 10, "the burst, shared: {shared:?}");
    assert_eq!(redis.keys("open").len(), 1);
    assert_eq!(metric(&g, "gateway_ratelimit_redis_up").await, 1.0);

    redis.kill();
    // The local limiter has not seen this key: it gets its own (local) burst, then 429s —
    // limits still hold, and no request fails for Redis.
    let started = Instant::now();
    let local = burst_of(&g, &g.keys.dev, 30).await;
    let took = started.elapsed();
    assert_eq!(count(&local, 503), 0, "{local:?}");
    assert!(
        (10..=12).contains(&count(&local, 200)),
        "local burst of 10 (± the rate): {local:?}"
    );
    assert!(count(&local, 429) >= 18, "{local:?}");
    assert!(
        metric(
            &g,
            "gateway_ratelimit_redis_unavailable_total{policy=\"open\",reason=\"resting\"}"
        )
        .await
            > 0.0,
        "requests decided without Redis are counted by reason and policy"
    );
    assert_eq!(metric(&g, "gateway_ratelimit_redis_up").await, 0.0);
    // After the first failure requests skip Redis instead of each waiting for its time-out.
    assert!(
        took < Duration::from_secs(3),
        "30 requests took {took:?} with Redis down"
    );

    redis.restart();
    until_shared_again(&g, &redis, "open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_fails_closed_with_503() {
    let mut redis = Redis::start();
    let g = start(&body(&redis, "closed", 50, 20, "closed"));
    let before = burst_of(&g, &g.keys.dev, 5).await;
    assert_eq!(before, vec![200; 5]);

    redis.kill();
    let during = burst_of(&g, &g.keys.dev, 10).await;
    assert_eq!(
        during,
        vec![503; 10],
        "fail closed: every keyed request is refused"
    );
    assert!(
        metric(
            &g,
            "gateway_ratelimit_redis_unavailable_total{policy=\"closed\",reason=\"resting\"}"
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &g,
            "gateway_ratelimit_redis_unavailable_total{policy=\"closed\",reason=\"error\"}"
        )
        .await
            + metric(
                &g,
                "gateway_ratelimit_redis_unavailable_total{policy=\"closed\",reason=\"timeout\"}"
            )
            .await
            >= 1.0,
        "the failed call itself is counted"
    );
    // Keyless paths are limited per replica and keep working.
    let live = send(&g, Proto::H1, "GET", "/v2/health/live", &[], "").await;
    assert_eq!(live.status, 200);

    redis.restart();
    until_shared_again(&g, &redis, "closed").await;
    let after = burst_of(&g, &g.keys.dev, 3).await;
    assert_eq!(after, vec![200; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_while_redis_is_down_and_shares_once_it_is_up() {
    let mut redis = Redis::start();
    redis.kill();
    let g = start(&body(&redis, "late", 50, 20, "closed"));
    assert_eq!(burst_of(&g, &g.keys.dev, 2).await, vec![503; 2]);
    let (_, config) = admin_get(&g, "/admin/config").await;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["rate_limits"]["shared"]["on_unavailable"], "closed");
    assert_eq!(config["rate_limits"]["shared"]["redis_up"], false);
    redis.restart();
    until_shared_again(&g, &redis, "late").await;
}
