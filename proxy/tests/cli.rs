//! The `gateway` binary as operators use it: check, keys add, and the first run of the
//! default config (dev certificate and key made, printed once; clear errors, never panics).

use crate::common::*;

#[test]
fn help_names_every_command() {
    let out = gateway().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "keys", "report", "health"] {
        assert!(text.contains(word), "{text}");
    }
    let keys = gateway().args(["keys", "add", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&keys.stdout).contains("--tenant"));
}

#[test]
fn check_accepts_the_shipped_config_and_summarises_it() {
    let out = gateway()
        .arg("check")
        .arg(repo().join("routes.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "breast-cancer: stable 90% -> cancer-v1 (local breast-cancer/1), canary 10% -> cancer-v2"
        ),
        "{text}"
    );
    assert!(text.contains("shadow 100% -> cancer-v3"), "{text}");
    assert!(text.contains("digits: stable 100% -> digits-v1"), "{text}");
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    let dir = temp_dir("check");
    let text = std::fs::read_to_string(repo().join("routes.yaml"))
        .unwrap()
        .replace(
            "models_dir: models",
            &format!("models_dir: {}", repo().join("models").display()),
        )
        .replace("weight: 10}", "weight: 140}")
        .replace("stable: digits-v1", "stable: digits-v9");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = gateway().arg("check").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(
        err.contains(&format!("bad.yaml:{}:", line_of("weight: 140"))),
        "{err}"
    );
    assert!(
        err.contains("routes[0].canary.weight: must be between 0 and 100, got 140"),
        "{err}"
    );
    assert!(
        err.contains(&format!("bad.yaml:{}:", line_of("stable: digits-v9"))),
        "{err}"
    );
    assert!(
        err.contains("routes[1].stable: no pool named \"digits-v9\""),
        "{err}"
    );
}

#[test]
fn keys_add_prints_the_key_once_and_stores_its_digest() {
    let dir = temp_dir("keys");
    let file = dir.join("keys.yaml");
    let config = dir.join("routes.yaml");
    std::fs::write(
        &config,
        "auth: {keys_file: keys.yaml}\nrate_limits: {tiers: {batch: {per_second: 1, burst: 1}}}\n",
    )
    .unwrap();
    let none = gateway()
        .args(["keys", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no keys file at") && none.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let out = gateway()
        .args(["keys", "add", "--tenant", "acme", "--tier", "batch", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("gwk_"), "{key}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&key));
    assert!(stored.contains(&hex::encode(proxy::config::keys::digest(&key))));
    assert!(
        stored.contains("tenant: acme") && stored.contains("tier: batch"),
        "{stored}"
    );
    let listed = gateway()
        .args(["keys", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    // The columns line up: the tenant starts where its header does.
    assert_eq!(lines[1].find("acme"), lines[0].find("tenant"), "{listed}");

    let bad = gateway()
        .args(["keys", "add", "--tenant", "acme", "--tier", "gold", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tier \"gold\" is not defined"));
}

/// A copy of the shipped config with free ports and an absolute models path.
/// `gateway run` that is expected to stop by itself (a start-up error).
fn run_once(config: &std::path::Path) -> std::process::Output {
    gateway().arg("run").arg("--config").arg(config).output().unwrap()
}

fn default_config_copy() -> (std::path::PathBuf, u16, u16) {
    let dir = temp_dir("first-run");
    let (https, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(repo().join("routes.yaml"))
        .unwrap()
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{https}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
        .replace(
            "models_dir: models",
            &format!("models_dir: {}", repo().join("models").display()),
        );
    let file = dir.join("routes.yaml");
    std::fs::write(&file, text).unwrap();
    (file, https, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn first_run_makes_a_dev_certificate_and_key_and_prints_the_key_once() {
    let (config, https, _) = default_config_copy();
    let dir = config.parent().unwrap().to_path_buf();
    let (child, printed) = run_until_serving(&config);
    assert!(printed.contains("trust"), "{printed}");
    assert!(dir.join("certs/ca.crt").exists() && dir.join("certs/server.key").exists());
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .expect("the dev key is printed")
        .to_string();
    assert!(printed.contains("curl --cacert"), "{printed}");

    // The printed key works, over TLS verified against the printed CA.
    let tls = client_tls(&dir.join("certs/ca.crt"));
    let addr = format!("127.0.0.1:{https}").parse().unwrap();
    wait_for(addr);
    let mut conn = connect(addr, &tls, Proto::H1).await;
    let r = conn
        .send(
            "POST",
            "/v2/models/breast-cancer/infer",
            &[("x-api-key", &key)],
            example(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.header("x-model-variant").is_some() && r.header("x-model-version").is_some());
    assert!(terminate(child).success());

    // Second run: nothing new is made, no key is printed.
    let (child, printed) = run_until_serving(&config);
    assert!(!printed.contains("gwk_"), "{printed}");
    assert!(!printed.contains("made a development CA"), "{printed}");
    assert!(terminate(child).success());
}

#[test]
fn start_up_problems_are_clear_errors() {
    // A broken certificate.
    let (config, _, _) = default_config_copy();
    let dir = config.parent().unwrap();
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(dir.join("certs/server.crt"), "garbage").unwrap();
    std::fs::write(dir.join("certs/server.key"), "garbage").unwrap();
    let out = run_once(&config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.crt") && !err.contains("panicked"), "{err}");

    // A port already taken.
    let (config, https, _) = default_config_copy();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", https)).unwrap();
    let out = run_once(&config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("address is in use"), "{err}");

    // A missing config.
    let out = gateway()
        .args(["run", "--config", "/nonexistent/routes.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_guards_the_admin_paths_and_is_required_off_loopback() {
    let (config, _, admin) = default_config_copy();
    let (child, _) = run_until_serving_with(
        &config,
        &[("GATEWAY_ADMIN_TOKEN", "s3cret-admin")],
        std::process::Stdio::null(),
    );
    let get = |path: &'static str, token: Option<&'static str>| async move {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut req = hyper::Request::get(format!("http://127.0.0.1:{admin}{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        client
            .request(req.body(http_body_util::Empty::new()).unwrap())
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get("/admin/config", None).await, 401);
    assert_eq!(get("/config", None).await, 401);
    assert_eq!(get("/admin/routes", Some("wrong")).await, 401);
    assert_eq!(get("/admin/config", Some("s3cret-admin")).await, 200);
    assert_eq!(get("/admin/routes", Some("s3cret-admin")).await, 200);
    // Prometheus and probes need no token.
    assert_eq!(get("/metrics", None).await, 200);
    assert_eq!(get("/health/ready", None).await, 200);
    assert!(terminate(child).success());

    // Reachable from other machines and no token: refused at start, with what to do.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("127.0.0.1:{admin}"), &format!("0.0.0.0:{admin}"));
    std::fs::write(&config, text).unwrap();
    let out = run_once(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GATEWAY_ADMIN_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_access_fields_and_failed_handshakes_are_counted() {
    let (config, https, admin) = default_config_copy();
    let log_file = config.parent().unwrap().join("gateway.log");
    let (child, printed) = run_until_serving_with(
        &config,
        &[("GATEWAY_LOG_FORMAT", "json")],
        std::fs::File::create(&log_file).unwrap().into(),
    );
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .unwrap()
        .to_string();
    let dir = config.parent().unwrap();
    let g_tls = client_tls(&dir.join("certs/ca.crt"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let mut conn = connect(addr, &g_tls, Proto::H1).await;
    let r = conn
        .send(
            "POST",
            "/v2/models/breast-cancer/infer",
            &[("x-api-key", key.as_str()), ("x-request-id", "log-test-1")],
            example(),
        )
        .await;
    assert_eq!(r.status, 200);
    // Plain HTTP on the TLS port: a failed handshake.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let metrics = client
        .get(format!("http://127.0.0.1:{admin}/metrics").parse().unwrap())
        .await
        .unwrap();
    let metrics = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .unwrap()
        .to_bytes();
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert!(
        metrics.contains("gateway_tls_handshake_failures_total 1"),
        "{metrics}"
    );
    assert!(terminate(child).success());

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(!log.contains(&key), "the key itself must never be logged");
    let access: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "access" && v["request_id"] == "log-test-1")
        .unwrap_or_else(|| panic!("no JSON access line in:\n{log}"));
    for field in [
        "tenant",
        "route",
        "variant",
        "version",
        "status",
        "ms",
        "bytes_in",
        "bytes_out",
        "rate_remaining",
        "shadows",
    ] {
        assert!(!access[field].is_null(), "no {field} in {access}");
    }
    assert_eq!(access["tenant"], "dev");
    assert_eq!(access["route"], "breast-cancer");
    assert_eq!(access["status"], 200);
    assert_eq!(
        access["shadows"], 1,
        "the default config mirrors every request to cancer-v3"
    );
}

#[test]
fn output_cut_short_by_a_closed_pipe_ends_quietly() {
    // `gateway check routes.yaml | head -0`: the reader is gone before the first line (the
    // check loads every model first), so every line meets a closed pipe.
    let mut child = gateway()
        .arg("check")
        .arg(repo().join("routes.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `gateway health` is the container's health check (no curl in the image): 0 when the probe
/// answers 200, 1 with the reason otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn health_probes_the_admin_listener() {
    let g = start(
        "pools:\n  cancer-v1: {local: {model: breast-cancer, version: 1}}\nroutes:\n  - {model: breast-cancer, stable: cancer-v1}\n",
    );
    let admin = g.admin.to_string();
    for probe in ["live", "ready", "startup"] {
        let out = gateway()
            .args(["health", "--admin", &admin, "--probe", probe])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{probe}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{probe}: ok")
        );
    }
    let bogus = gateway()
        .args(["health", "--admin", &admin, "--probe", "deep"])
        .output()
        .unwrap();
    assert!(!bogus.status.success());
    assert!(String::from_utf8_lossy(&bogus.stderr).contains("one of live, ready, startup"));
    g.stop();
    let down = gateway().args(["health", "--admin", &admin]).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(
        said.contains("cannot connect")
            && said.contains("refused")
            && said.contains("is the gateway running?"),
        "{said}"
    );
}

/// A TLS ClientHello naming an IP address in SNI (as `wrk` and OpenSSL's clients do, which
/// rustls warns about) and offering nothing this server can agree to: the handshake fails.
fn client_hello_with_ip_sni() -> Vec<u8> {
    let name = b"127.0.0.1";
    let mut sni = vec![0u8];
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut list = (sni.len() as u16).to_be_bytes().to_vec();
    list.extend(sni);
    let mut ext = vec![0, 0]; // server_name
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    let mut body = vec![3, 3]; // TLS 1.2
    body.extend([0u8; 32]); // random
    body.push(0); // no session id
    body.extend([0, 4, 0x13, 0x01, 0xc0, 0x2f]); // two cipher suites
    body.extend([1, 0]); // no compression
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Scanners and hostile clients fail TLS handshakes as fast as they connect. Each is counted,
/// but the log gets a summary (the first at once, then at most one line every 10 s, the rest
/// at shutdown), not a line per connection from pingora or rustls.
#[tokio::test(flavor = "multi_thread")]
async fn failed_handshakes_are_counted_and_summed_up_in_the_log_not_logged_one_by_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("handshake-flood");
    let (config, https, admin) = binary_config(
        &dir,
        "access_log: false",
        "pools:\n  v1: {local: {model: breast-cancer, version: 1}}\nroutes:\n  - {model: breast-cancer, stable: v1}\n",
    );
    let log_file = dir.join("gateway.log");
    let (child, printed) =
        run_until_serving_with(&config, &[], std::fs::File::create(&log_file).unwrap().into());
    let key = printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .unwrap()
        .to_string();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let hello: &[u8] = if i % 2 == 0 {
            &client_hello_with_ip_sni()
        } else {
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        };
        tcp.write_all(hello).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read_to_end(&mut sink)).await;
    }
    // A good client still gets its answer.
    let mut conn = connect(addr, &client_tls(&dir.join("certs/ca.crt")), Proto::H1).await;
    let r = conn
        .send(
            "POST",
            "/v2/models/breast-cancer/infer",
            &[("x-api-key", key.as_str())],
            example(),
        )
        .await;
    assert_eq!(r.status, 200);
    let (status, metrics) = admin_get_at(&format!("127.0.0.1:{admin}"), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        series_in(&metrics, "gateway_tls_handshake_failures_total"),
        FLOOD as f64,
        "{metrics}"
    );
    assert!(terminate(child).success());

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        !log.contains("Illegal SNI"),
        "rustls's warning per client:\n{log}"
    );
    assert!(
        !log.contains("ERROR"),
        "pingora's error per failed handshake:\n{log}"
    );
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client TLS handshake"))
        .collect();
    assert!(
        (1..=3).contains(&summaries.len()),
        "the first at once, the rest at shutdown (one more if 10 s passed):\n{log}"
    );
    let summed: usize = summaries
        .iter()
        .map(|l| {
            let text = &l[l.find("WARN").unwrap() + 4..];
            let n = text.split_whitespace().find_map(|w| w.parse::<usize>().ok());
            n.unwrap_or_else(|| panic!("no count in {l}"))
        })
        .sum();
    assert_eq!(summed, FLOOD, "every failure is in a summary:\n{log}");
    assert!(
        summaries[0]
            .contains(" failed since the start; the last: Downstream handshake error from 127.0.0.1:"),
        "{}",
        summaries[0]
    );
}
