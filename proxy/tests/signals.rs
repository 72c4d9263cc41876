//! The `gateway` process and its signals: SIGTERM (stop accepting, finish what is in flight
//! within the configured grace, exit), SIGQUIT with a new process waiting (binary upgrade:
//! the listening sockets change hands with no failed request), SIGHUP (reload).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A config for the binary: one route to a remote pool at `upstream`.
fn config(upstream: std::net::SocketAddr, grace_s: u64) -> (std::path::PathBuf, u16) {
    config_with(upstream, &format!("shutdown_grace_s: {grace_s}"))
}

fn config_with(upstream: std::net::SocketAddr, server: &str) -> (std::path::PathBuf, u16) {
    let dir = temp_dir("shutdown");
    let (https, admin) = (free_port(), free_port());
    let text = format!(
        "listen: {{https: \"127.0.0.1:{https}\", admin: \"127.0.0.1:{admin}\"}}\n\
         tls: {{cert: certs/server.crt, key: certs/server.key, generate_dev_cert: true}}\n\
         auth: {{keys_file: certs/api-keys.yaml, create_dev_key: true}}\n\
         server: {{threads: 2, {server}, upgrade_sock: upgrade.sock}}\n\
         models_dir: {}\n\
         pools:\n  slow: {{http: {{endpoints: [\"{upstream}\"], model: slow, version: 1, timeout_ms: 20000}}}}\n\
         routes:\n  - model: slow\n    stable: slow\n",
        repo().join("models").display()
    );
    let file = dir.join("routes.yaml");
    std::fs::write(&file, text).unwrap();
    (file, https)
}

fn key_of(printed: &str) -> String {
    printed
        .split_whitespace()
        .find(|w| w.starts_with("gwk_"))
        .expect("the first run prints the key")
        .to_string()
}

fn signal(child: &Child, name: &str) {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
}

fn wait_exit(child: &mut Child, within: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("the gateway did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Client {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    key: String,
}

impl Client {
    /// One request on a fresh connection: its status, or `None` when the transport failed.
    async fn slow(&self) -> Option<u16> {
        let headers = [
            ("x-api-key", self.key.as_str()),
            ("content-type", "application/json"),
        ];
        let mut conn = try_connect(self.addr, &self.tls, Proto::H2).await.ok()?;
        let reply = conn
            .try_send("POST", "/v2/models/slow/infer", &headers, example())
            .await;
        reply.ok().map(|r| r.status)
    }
}

/// Runs the binary on [`config`] until it serves; a client with its dev key.
fn serve(upstream: std::net::SocketAddr, grace_s: u64) -> (Child, Arc<Client>, std::path::PathBuf) {
    let (file, https) = config(upstream, grace_s);
    let (child, printed) = run_until_serving(&file);
    let client = Arc::new(Client {
        addr: format!("127.0.0.1:{https}").parse().unwrap(),
        tls: client_tls(&file.parent().unwrap().join("certs/ca.crt")),
        key: key_of(&printed),
    });
    (child, client, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let upstream = FakeUpstream::start(Misbehaviour::Slow(Duration::from_secs(2))).await;
    let (mut child, client, _) = serve(upstream.addr, 10);
    let request = {
        let client = client.clone();
        tokio::spawn(async move { client.slow().await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let sent_term = Instant::now();
    signal(&child, "TERM");
    // New connections are refused at once, well before the request in flight is done.
    let refused = async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(client.addr).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(refused.await, "the listener still accepts after SIGTERM");
    assert_eq!(
        request.await.unwrap(),
        Some(200),
        "the request in flight must finish"
    );
    let (status, _) = wait_exit(&mut child, Duration::from_secs(10));
    let took = sent_term.elapsed();
    assert!(status.success(), "{status:?}");
    // It waited for the request (about 1.6 s left) but not for the 10 s grace.
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_requests_that_outlast_the_grace() {
    let upstream = FakeUpstream::start(Misbehaviour::Slow(Duration::from_secs(20))).await;
    let (mut child, client, _) = serve(upstream.addr, 1);
    let _request = {
        let client = client.clone();
        tokio::spawn(async move { client.slow().await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&child, "TERM");
    let (status, took) = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "shutdown_grace_s: 1, but it exited {took:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_the_sockets_to_a_new_process_without_a_failed_request() {
    let upstream = FakeUpstream::start(Misbehaviour::Slow(Duration::from_millis(20))).await;
    let (mut old, client, file) = serve(upstream.addr, 10);
    let dir = file.parent().unwrap().to_path_buf();
    // Clients on fresh connections throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.slow().await {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // The new process waits for the sockets; the old one hands them over on SIGQUIT.
    let mut new = gateway()
        .args(["run", "--upgrade", "--config"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join("upgrade.sock");
    let waited = Instant::now();
    while !sock.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the new process never listened on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&old, "QUIT");
    let (status, _) = wait_exit(&mut old, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "nobody answers after the old process left"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process must still run"
    );
    signal(&new, "TERM");
    wait_exit(&mut new, Duration::from_secs(10));
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("upgrade: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let upstream = FakeUpstream::start(Misbehaviour::Slow(Duration::from_millis(1))).await;
    // No watcher: only the signal can make the edit take effect.
    let (file, _) = config_with(upstream.addr, "watch: false");
    let (mut child, _) = run_until_serving(&file);
    let admin = std::fs::read_to_string(&file)
        .unwrap()
        .split("admin: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    let routes = |admin: String| async move {
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let r = client
            .get(format!("http://{admin}/admin/config").parse().unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("  - model: slow\n", "  - model: renamed\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        routes(admin.clone()).await["reload"]["generation"],
        1,
        "no watcher: nothing yet"
    );
    signal(&child, "HUP");
    let start = Instant::now();
    loop {
        let config = routes(admin.clone()).await;
        if config["reload"]["generation"] == 2 {
            assert_eq!(config["routes"][0]["model"], "renamed");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload: {config}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the gateway"
    );
    signal(&child, "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).0.success());
}
