//! Hot reload under load: weight edits converge, bad files are refused (once each, with
//! their location) while the old config serves, no request fails; renames, ConfigMap symlink
//! swaps, key revocations and certificates are picked up; a slow request finishes on the
//! config it started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use parking_lot::Mutex;
use serde_json::Value;

/// Generous rate limits, so that only the gateway's own failures could fail a request.
fn body(weight: u8) -> String {
    format!(
        "rate_limits: {{default: {{per_second: 1000000, burst: 1000000}}, tiers: {{batch: {{per_second: 2000, burst: 4000}}}}}}\n\
         {LOCAL_POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n    canary: {{pool: cancer-v2, weight: {weight}}}\n"
    )
}

async fn admin_json(g: &Gateway, path: &str) -> Value {
    let (status, text) = admin_get(g, path).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn generation(g: &Gateway) -> u64 {
    admin_json(g, "/admin/config").await["reload"]["generation"]
        .as_u64()
        .unwrap()
}

/// `gateway_config_reload_total` for `ok` and `rejected`.
async fn reload_counts(g: &Gateway) -> (u64, u64) {
    let (_, text) = admin_get(g, "/metrics").await;
    let count = |result: &str| {
        let prefix = format!("gateway_config_reload_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (count("ok"), count("rejected"))
}

/// Polls until `check` holds; returns how long it took. Fails after `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The config files as they must be refused, one per kind of mistake, with a piece of the
/// message each must produce.
fn invalid(g: &Gateway, kind: usize, weight: u8) -> (String, &'static str) {
    let good = body(weight);
    match kind % 7 {
        0 => (g.config_text(&format!("{good}  - model: [unclosed\n")), ""),
        1 => (
            g.config_text(&good.replace("weight:", "wieght:")),
            "unknown field",
        ),
        2 => (g.config_text(&body(150)), "between 0 and 100"),
        3 => (
            g.config_text(&good.replace("pool: cancer-v2", "pool: cancer-v9")),
            "no pool named",
        ),
        4 => (
            g.config_text(&good.replace("version: 2}", "version: 99}")),
            "no model file",
        ),
        5 => (
            g.config_text(&format!(
                "{good}  - model: breast-cancer\n    stable: cancer-v1\n"
            )),
            "already defined",
        ),
        _ => (
            g.config_text(&good).replace("server.crt", "missing.crt"),
            "missing.crt",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_move_and_bad_files_are_refused_under_load_without_a_failed_request() {
    let g = Arc::new(start(&body(0)));
    let stop = Arc::new(AtomicBool::new(false));
    // (sent at, answered by the canary)
    let seen: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for i in 0..8 {
        let (g, stop, seen, failures) = (g.clone(), stop.clone(), seen.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
            let mut conn = connect(g.https, &g.tls, proto).await;
            let headers = [
                ("x-api-key", g.keys.dev.as_str()),
                ("content-type", "application/json"),
            ];
            let body = example();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let r = conn
                    .send("POST", "/v2/models/breast-cancer/infer", &headers, body.clone())
                    .await;
                if r.status == 200 {
                    seen.lock()
                        .push((sent, r.header("x-model-variant") == Some("canary")));
                } else {
                    failures
                        .lock()
                        .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                }
            }
        }));
    }

    let weights = [100u8, 25, 75, 0, 50];
    let (mut applied, mut refused) = (0u64, 0u64);
    let mut in_force = 0u8;
    let mut slowest = Duration::ZERO;
    for step in 0..120 {
        if step % 6 == 5 {
            // A broken file: refused with its location, counted once, old config serving.
            let (text, expect) = invalid(&g, refused as usize, in_force);
            g.write_config(&text);
            refused += 1;
            let took = until(Duration::from_secs(2), "a rejection", || async {
                reload_counts(&g).await.1 == refused
            })
            .await;
            slowest = slowest.max(took);
            let status = admin_json(&g, "/admin/config").await;
            let error = status["reload"]["last_error"]["errors"][0]
                .as_str()
                .unwrap()
                .to_string();
            let config = g.config.display().to_string();
            let located = error
                .strip_prefix(&format!("{config}:"))
                .and_then(|rest| rest.split(':').next())
                .is_some_and(|line| line.parse::<u32>().is_ok());
            assert!(located, "no line number in {error:?}");
            assert!(error.contains(expect), "{error:?} does not say {expect:?}");
            assert_eq!(status["reload"]["files_rejected"], true);
            assert_eq!(
                status["routes"][0]["canary"]["weight"], in_force,
                "the old config must keep serving"
            );
            continue;
        }
        let weight = weights[applied as usize % weights.len()];
        g.write_config(&g.config_text(&body(weight)));
        applied += 1;
        let want = applied + 1;
        let took = until(Duration::from_secs(2), "a weight change", || async {
            generation(&g).await == want
        })
        .await;
        slowest = slowest.max(took);
        in_force = weight;
        // The split of requests sent after the swap converges to the new weight.
        let since = Instant::now();
        let n = 300;
        until(Duration::from_secs(10), "requests after a reload", || async {
            seen.lock().iter().filter(|(t, _)| *t >= since).count() >= n
        })
        .await;
        let after: Vec<bool> = seen
            .lock()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, c)| *c)
            .collect();
        let share = after.iter().filter(|c| **c).count() as f64 / after.len() as f64;
        let p = weight as f64 / 100.0;
        let tolerance = 4.5 * (p * (1.0 - p) / after.len() as f64).sqrt() + 1e-9;
        assert!(
            (share - p).abs() <= tolerance,
            "weight {weight}: canary share {share:.3} of {} requests",
            after.len()
        );
    }
    // Nothing is counted late or twice.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reload_counts(&g).await, (applied, refused));
    assert_eq!((applied, refused), (100, 20));
    // Weight edits reuse the loaded pools.
    let diff = admin_json(&g, "/admin/config/diff").await;
    let last = &diff["reloads"][0]["diff"];
    assert_eq!(last["pools_loaded"], serde_json::json!([]), "{last}");
    assert_eq!(last["weights"][0]["to"], in_force);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client's request failed at the transport level");
    }
    let failures = failures.lock();
    let total = seen.lock().len();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!(
        "{total} requests, 0 failed; 100 weight changes and 20 refused files; slowest pick-up {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_finishes_on_the_config_it_started_with() {
    let slow = FakeUpstream::start(Misbehaviour::Slow(Duration::from_secs(2))).await;
    let with_slow = format!(
        "{LOCAL_POOLS}  slow: {{http: {{endpoints: [\"{}\"], model: slow, version: 1, timeout_ms: 10000}}}}\n\
         routes:\n  - model: breast-cancer\n    stable: cancer-v1\n  - model: slow\n    stable: slow\n",
        slow.addr
    );
    let without = format!("{LOCAL_POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n");
    let g = Arc::new(start(&with_slow));
    let request = {
        let g = g.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = infer(&g, Proto::H2, &g.keys.dev, "slow", &[]).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.write_config(&g.config_text(&without));
    until(Duration::from_secs(2), "the reload", || async {
        generation(&g).await == 2
    })
    .await;
    // The new config has no such route; the request that started before still completes.
    assert_eq!(infer(&g, Proto::H1, &g.keys.dev, "slow", &[]).await.status, 404);
    let diff = admin_json(&g, "/admin/config/diff").await;
    assert_eq!(
        diff["reloads"][0]["diff"]["routes_removed"],
        serde_json::json!(["slow"])
    );
    assert_eq!(
        diff["reloads"][0]["diff"]["pools_retired"],
        serde_json::json!(["slow"])
    );
    let (r, took) = request.await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["outputs"][0]["data"], serde_json::json!([1]));
    assert!(took >= Duration::from_secs(2), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_and_configmap_symlink_swaps_are_picked_up_within_2s() {
    let g = start(&body(10));
    g.write_config(&g.config_text(&body(40)));
    let took = until(Duration::from_secs(2), "a renamed file", || async {
        generation(&g).await == 2
    })
    .await;
    eprintln!("rename picked up in {took:?}");

    let cm = start_in(&body(10), Layout::ConfigMap);
    cm.swap_configmap(&cm.config_text(&body(60)), 2);
    let took = until(Duration::from_secs(2), "a ConfigMap swap", || async {
        generation(&cm).await == 2
    })
    .await;
    let config = admin_json(&cm, "/admin/config").await;
    assert_eq!(config["routes"][0]["canary"]["weight"], 60);
    eprintln!("ConfigMap ..data swap picked up in {took:?}");
    // A second swap too (the watch follows the directory, not the first target).
    cm.swap_configmap(&cm.config_text(&body(70)), 3);
    until(Duration::from_secs(2), "a second ConfigMap swap", || async {
        generation(&cm).await == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_are_debounced_and_touching_a_file_reloads_nothing() {
    let g = start(&body(0));
    // 10 writes within 100 ms: at most 2 reloads, ending on the last weight. The writes are
    // the test's own: on a busy machine (other tests run alongside) they may not fit in
    // 100 ms, and then more reloads would be right; such a burst is not judged, another is
    // made.
    let mut judged = false;
    for attempt in 0..5u8 {
        let before = generation(&g).await;
        let last = attempt * 10 + 10;
        let started = Instant::now();
        for w in 1..=10u8 {
            g.write_config(&g.config_text(&body(attempt * 10 + w)));
            std::thread::sleep(Duration::from_millis(5));
        }
        let fitted = started.elapsed() < Duration::from_millis(100);
        until(Duration::from_secs(3), "the burst's reload", || async {
            admin_json(&g, "/admin/config").await["routes"][0]["canary"]["weight"] == last
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if fitted {
            let reloads = generation(&g).await - before;
            assert!((1..=2).contains(&reloads), "{reloads} reloads for one burst");
            judged = true;
            break;
        }
    }
    assert!(judged, "this machine never wrote 10 files within 100 ms");
    let reloads = generation(&g).await - 1;

    // Same bytes again, and a bare touch: no reload at all.
    let text = std::fs::read_to_string(&g.config).unwrap();
    g.write_config(&text);
    std::fs::File::options()
        .append(true)
        .open(&g.config)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    std::fs::write(g.dir.join("unrelated.txt"), "x").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(generation(&g).await, 1 + reloads);
    assert_eq!(reload_counts(&g).await, (reloads, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_within_2s_and_a_new_key_works() {
    let g = start(&body(0));
    assert_eq!(
        infer(&g, Proto::H1, &g.keys.dev, "breast-cancer", &[])
            .await
            .status,
        200
    );
    let keys_file = g.dir.join("api-keys.yaml");
    let id = proxy::config::keys::id_of(&g.keys.dev);
    proxy::config::keys::set_disabled(&keys_file, &id, true).unwrap();
    let took = until(Duration::from_secs(2), "the revocation", || async {
        infer(&g, Proto::H1, &g.keys.dev, "breast-cancer", &[])
            .await
            .status
            == 403
    })
    .await;
    eprintln!("revoked key refused after {took:?}");
    let (fresh, _) = proxy::config::keys::add_key(&keys_file, "new", "default").unwrap();
    until(Duration::from_secs(2), "the new key", || async {
        infer(&g, Proto::H2, &fresh, "breast-cancer", &[]).await.status == 200
    })
    .await;
    let diff = admin_json(&g, "/admin/config/diff").await;
    let keys_changes: Vec<Value> = diff["reloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["diff"].clone())
        .collect();
    assert!(
        keys_changes
            .iter()
            .any(|d| d["keys_disabled"] == serde_json::json!([id]))
    );
}

/// The keys file reloads on its own: a revocation applies while `routes.yaml` is broken (a
/// weight of 101), and a broken keys file keeps the keys in force, refused like any file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_apply_on_their_own_whatever_the_config_is() {
    let g = start(&body(0));
    let ok = |key: String| {
        let g = &g;
        async move { infer(g, Proto::H1, &key, "breast-cancer", &[]).await.status }
    };
    assert_eq!(ok(g.keys.dev.clone()).await, 200);
    // routes.yaml broken: refused, the config in force keeps serving.
    g.write_config(&g.config_text(&body(0)).replace("weight: 0", "weight: 101"));
    until(Duration::from_secs(2), "the broken config's refusal", || async {
        admin_json(&g, "/admin/config").await["reload"]["files_rejected"] == true
    })
    .await;
    // A revocation still applies at once.
    let keys_file = g.dir.join("api-keys.yaml");
    let id = proxy::config::keys::id_of(&g.keys.dev);
    proxy::config::keys::set_disabled(&keys_file, &id, true).unwrap();
    let took = until(Duration::from_secs(2), "the revocation", || async {
        ok(g.keys.dev.clone()).await == 403
    })
    .await;
    eprintln!("revoked key refused after {took:?}, with routes.yaml broken");
    // A broken keys file: the keys in force stay, and the refusal is reported.
    let before = std::fs::read_to_string(&keys_file).unwrap();
    std::fs::write(&keys_file, format!("{before}\n  - id: nonsense\n")).unwrap();
    until(
        Duration::from_secs(2),
        "the broken keys file's refusal",
        || async { admin_json(&g, "/admin/config").await["reload"]["keys"]["file_rejected"] == true },
    )
    .await;
    let config = admin_json(&g, "/admin/config").await;
    let errors = config["reload"]["keys"]["last_error"]["errors"].to_string();
    assert!(errors.contains("api-keys.yaml"), "{errors}");
    assert_eq!(ok(g.keys.batch.clone()).await, 200, "the keys in force stay");
    assert_eq!(ok(g.keys.dev.clone()).await, 403, "and so does the revocation");
    // Fixed: applied, and the refusal clears.
    std::fs::write(&keys_file, &before).unwrap();
    until(Duration::from_secs(2), "the fixed keys file", || async {
        admin_json(&g, "/admin/config").await["reload"]["keys"]["file_rejected"] == false
    })
    .await;
    let metrics = admin_get(&g, "/metrics").await.1;
    assert!(
        metrics.contains("gateway_config_reload_total{result=\"rejected\"} 2"),
        "{metrics}"
    );
}

/// The leaf certificate the gateway presents to a new connection.
async fn served_certificate(g: &Gateway) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(g.tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart_and_a_bad_one_is_refused() {
    let g = start(&body(0));
    let first = served_certificate(&g).await;
    assert_eq!(first, pem_der(&g.dir.join("server.crt")));

    // A new leaf from the same development CA, put in place file by file (renames).
    let next = temp_dir("cert");
    std::fs::copy(g.dir.join("ca.crt"), next.join("ca.crt")).unwrap();
    std::fs::copy(g.dir.join("ca.key"), next.join("ca.key")).unwrap();
    proxy::http::tls::ensure_dev_cert(&next.join("server.crt"), &next.join("server.key")).unwrap();
    for name in ["server.key", "server.crt"] {
        std::fs::copy(next.join(name), g.dir.join(format!("{name}.new"))).unwrap();
        std::fs::rename(g.dir.join(format!("{name}.new")), g.dir.join(name)).unwrap();
    }
    let new = pem_der(&next.join("server.crt"));
    assert_ne!(first, new);
    let took = until(Duration::from_secs(2), "the new certificate", || async {
        served_certificate(&g).await == new
    })
    .await;
    eprintln!("new certificate served after {took:?}");
    assert_eq!(
        infer(&g, Proto::H2, &g.keys.dev, "breast-cancer", &[])
            .await
            .status,
        200
    );

    // A broken certificate is refused; the one in force keeps being served.
    let (_, rejected_before) = reload_counts(&g).await;
    std::fs::write(
        g.dir.join("server.crt.new"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    std::fs::rename(g.dir.join("server.crt.new"), g.dir.join("server.crt")).unwrap();
    until(Duration::from_secs(2), "the refusal", || async {
        reload_counts(&g).await.1 == rejected_before + 1
    })
    .await;
    let status = admin_json(&g, "/admin/config").await;
    let error = status["reload"]["last_error"]["errors"][0].as_str().unwrap();
    assert!(error.contains("server.crt"), "{error}");
    assert_eq!(served_certificate(&g).await, new);
    assert_eq!(
        infer(&g, Proto::H1, &g.keys.dev, "breast-cancer", &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_reports_what_it_did() {
    // No watcher: every reload here is the one the admin API asked for.
    let body = |w| {
        format!(
            "server: {{threads: 2, access_log: false, watch: false}}\n{}",
            body(w)
        )
    };
    let g = start(&body(0));
    let post = |g: &Gateway| {
        let url = format!("http://{}/admin/reload", g.admin);
        async move {
            let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let req = hyper::Request::post(url)
                .body(http_body_util::Empty::new())
                .unwrap();
            let r = client.request(req).await.unwrap();
            let status = r.status().as_u16();
            let body = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (status, v) = post(&g).await;
    assert_eq!((status, v["result"].as_str()), (200, Some("unchanged")));

    // Written in place (no rename) and reloaded at once, before the watcher's turn.
    std::fs::write(&g.config, g.config_text(&body(30))).unwrap();
    let (status, v) = post(&g).await;
    assert_eq!((status, v["result"].as_str()), (200, Some("ok")), "{v}");
    assert_eq!(v["diff"]["weights"][0]["from"], 0);
    assert_eq!(v["diff"]["weights"][0]["to"], 30);
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .contains("weight breast-cancer 0 -> 30")
    );

    std::fs::write(&g.config, g.config_text(&body(130))).unwrap();
    let (status, v) = post(&g).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["result"], "rejected");
    assert!(v["errors"][0].as_str().unwrap().contains("between 0 and 100"));
    let config = admin_json(&g, "/admin/config").await;
    assert_eq!(config["routes"][0]["canary"]["weight"], 30);
    assert_eq!(config["reload"]["generation"], 2);
    assert_eq!(config["reload"]["hash"].as_str().unwrap().len(), 32);
}

/// The reload status holds the hash of the keys *in force*, not of the file as read again
/// later: a keys file edited between the gateway reading it at start and the reloader taking
/// charge is loaded by the next reload. (The status used to hash the file again, edit
/// included; the watcher then took the edit for the keys in force and never loaded it: a
/// key revoked in that moment would have stayed valid until the next edit.)
#[test]
fn a_keys_edit_made_while_starting_is_loaded_by_the_next_reload() {
    use proxy::config::keys::{Lookup, add_key};
    use proxy::reload::{Outcome, Reloader, Trigger};

    let dir = temp_dir("keys-while-starting");
    let config = dir.join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "tls: {{cert: server.crt, key: server.key, generate_dev_cert: true}}\n\
             auth: {{keys_file: api-keys.yaml, create_dev_key: true}}\n\
             models_dir: {}\n{LOCAL_POOLS}routes:\n  - model: breast-cancer\n    stable: cancer-v1\n",
            repo().join("models").display()
        ),
    )
    .unwrap();
    let (snapshot, _) = proxy::server::prepare(&config).unwrap();
    let tls = proxy::reload::tls_hash(&snapshot.config);
    let certs = proxy::http::tls::CertResolver::new(
        proxy::http::tls::load_certified_key(&snapshot.config.tls_cert, &snapshot.config.tls_key).unwrap(),
    );
    // The edit, after the snapshot read the keys file and before the reloader starts.
    let (late, _) = add_key(&snapshot.config.keys_file, "late", "default").unwrap();
    assert_eq!(snapshot.keys.lookup(&late), Lookup::Unknown);

    let metrics = Arc::new(proxy::telemetry::metrics::Metrics::new());
    let state = Arc::new(arc_swap::ArcSwap::from_pointee(snapshot));
    let clock = Arc::new(proxy::rollout::SystemClock::default());
    let rollouts = proxy::rollout::Rollouts::new(None, clock, metrics.clone());
    let reloader = Reloader::new(state.clone(), certs, tls, metrics, rollouts);
    let outcome = reloader.reload_keys(Trigger::File);
    assert!(matches!(outcome, Outcome::Applied(_)), "{outcome:?}");
    assert!(matches!(state.load().keys.lookup(&late), Lookup::Valid(_)));
    // And nothing more to load after it.
    assert!(matches!(reloader.reload_keys(Trigger::File), Outcome::Unchanged));
    let _ = std::fs::remove_dir_all(&dir);
}
