//! Test harness: a real gateway (pingora, rustls, real model pools) on ephemeral ports in
//! this process, with its own temporary certificates, keys and config; a TLS client that
//! speaks HTTP/1.1 or HTTP/2; a real `inference-server` for remote pools.
#![allow(dead_code)] // each test binary uses a different part of this module

mod backends;
pub mod grpc;
mod redis;
#[allow(unused_imports)] // not every test binary calls a model server
pub use backends::*;
#[allow(unused_imports)] // only the tests of shared state start a Redis
pub use redis::Redis;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Taken first by each test of `tests/one_at_a_time.rs`' files, whose outcome depends on this
/// process's CPU: they run one at a time (see that file).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn example() -> String {
    std::fs::read_to_string(repo().join("models/example.json")).unwrap()
}

/// A port no other test in this process has been given. (Another process could still take
/// it between this check and the bind; the gateway then fails to start with a clear error.)
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if used.lock().unwrap().insert(port) {
            return port;
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gw-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Keys made for a test gateway.
pub struct Keys {
    pub dev: String,
    pub batch: String,
    pub disabled: String,
}

/// A running gateway. Stops (gracefully) when dropped.
pub struct Gateway {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    /// The config file the gateway runs on (and watches).
    pub config: PathBuf,
    /// Everything of the config but the test's body: listeners, TLS, keys, models.
    pub header: String,
    pub keys: Keys,
    pub tls: Arc<rustls::ClientConfig>,
    handle: proxy::server::ShutdownHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a gateway whose config is `body` (everything but listen/tls/auth/models_dir,
/// which the harness fills in).
pub fn start(body: &str) -> Gateway {
    start_in(body, Layout::File)
}

/// Where the config file lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `dir/routes.yaml`
    File,
    /// A Kubernetes ConfigMap volume: `dir/cm/routes.yaml -> ..data/routes.yaml`,
    /// `..data -> ..v1`; an update writes `..vN` and swaps `..data` (see [`Gateway::swap_configmap`]).
    ConfigMap,
}

pub fn start_in(body: &str, layout: Layout) -> Gateway {
    start_patched(body, layout, |_| {})
}

/// [`start`], with more settings in the `listen:` line (which the harness writes).
pub fn start_with_listen(body: &str, listen: &str) -> Gateway {
    launch(body, Layout::File, listen, |_| {})
}

/// [`start_in`], with the loaded snapshot changed by `patch` before the gateway serves it.
pub fn start_patched(
    body: &str,
    layout: Layout,
    patch: impl FnOnce(&mut proxy::routing::snapshot::Snapshot),
) -> Gateway {
    launch(body, layout, "", patch)
}

fn launch(
    body: &str,
    layout: Layout,
    listen: &str,
    patch: impl FnOnce(&mut proxy::routing::snapshot::Snapshot),
) -> Gateway {
    let listen = if listen.is_empty() {
        String::new()
    } else {
        format!(", {listen}")
    };
    let dir = temp_dir("gw");
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    proxy::http::tls::ensure_dev_cert(&dir.join("server.crt"), &dir.join("server.key")).unwrap();
    let keys_file = dir.join("api-keys.yaml");
    let (dev, _) = proxy::config::keys::add_key(&keys_file, "dev", "default").unwrap();
    let (batch, _) = proxy::config::keys::add_key(&keys_file, "bulk", "batch").unwrap();
    let (disabled, id) = proxy::config::keys::add_key(&keys_file, "gone", "default").unwrap();
    proxy::config::keys::set_disabled(&keys_file, &id, true).unwrap();

    // The harness makes a key of tier "batch": configs that say nothing of rate limits get it.
    let tiers = if body.contains("rate_limits:") {
        ""
    } else {
        "rate_limits: {tiers: {batch: {per_second: 2000, burst: 4000}}}\n"
    };
    // A body may bring its own `server:` settings.
    let server = if body.starts_with("server:") || body.contains("\nserver:") {
        ""
    } else {
        "server: {threads: 2, access_log: false, shutdown_grace_s: 5}\n"
    };
    let models = if body.starts_with("models_dir:") || body.contains("\nmodels_dir:") {
        String::new()
    } else {
        format!("models_dir: {}\n", repo().join("models").display())
    };
    // Absolute paths: the config may live elsewhere (a ConfigMap layout).
    let header = format!(
        "listen: {{https: \"{https}\", admin: \"{admin}\"{listen}}}\n\
         tls: {{cert: {dir}/server.crt, key: {dir}/server.key}}\n\
         auth: {{keys_file: {dir}/api-keys.yaml, may_choose_variant: {{tenants: [dev]}}}}\n\
         {models}{server}{tiers}",
        dir = dir.display(),
    );
    let config = format!("{header}{body}");
    let config_path = match layout {
        Layout::File => {
            let p = dir.join("routes.yaml");
            std::fs::write(&p, config).unwrap();
            p
        }
        Layout::ConfigMap => {
            let cm = dir.join("cm");
            std::fs::create_dir_all(cm.join("..v1")).unwrap();
            std::fs::write(cm.join("..v1/routes.yaml"), config).unwrap();
            std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/routes.yaml", cm.join("routes.yaml")).unwrap();
            cm.join("routes.yaml")
        }
    };
    let (mut snapshot, _) = proxy::server::prepare(&config_path).unwrap_or_else(|e| panic!("{e}"));
    patch(&mut snapshot);
    let built = proxy::server::build(snapshot).unwrap_or_else(|e| panic!("{e}"));
    let (shutdown, handle) = proxy::server::manual_shutdown();
    let thread = std::thread::spawn(move || built.run(Box::new(shutdown)));
    wait_for(https);
    wait_for(admin);
    Gateway {
        https,
        admin,
        tls: client_tls(&dir.join("ca.crt")),
        config: config_path,
        header,
        dir,
        keys: Keys { dev, batch, disabled },
        handle,
        thread: Some(thread),
    }
}

pub fn wait_for(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr}");
}

impl Gateway {
    /// The whole config text for a test body.
    pub fn config_text(&self, body: &str) -> String {
        format!("{}{body}", self.header)
    }

    /// Replaces the config file as editors do: write a temporary file, rename it over.
    pub fn write_config(&self, text: &str) {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Updates a [`Layout::ConfigMap`] config as the kubelet does: a new `..vN` directory,
    /// then `..data` swapped to it by renaming a new symlink over it.
    pub fn swap_configmap(&self, text: &str, n: usize) {
        let cm = self.config.parent().unwrap();
        let version = format!("..v{n}");
        std::fs::create_dir_all(cm.join(&version)).unwrap();
        std::fs::write(cm.join(&version).join("routes.yaml"), text).unwrap();
        let tmp = cm.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, cm.join("..data")).unwrap();
    }

    pub fn stop(mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().expect("gateway thread panicked");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client config that trusts the gateway's development CA, with TLS 1.2 and 1.3.
pub fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    client_tls_versions(ca, &[&rustls::version::TLS12, &rustls::version::TLS13])
}

pub fn client_tls_versions(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The protocol ALPN settled on.
    pub alpn: Option<Vec<u8>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {:?}", self.body))
            .to_string()
    }
}

/// An HTTP/1.1 or HTTP/2 connection over TLS to the gateway.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Connection {
    conn: Conn,
    pub alpn: Option<Vec<u8>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
    authority: String,
}

pub async fn connect(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>, proto: Proto) -> Connection {
    try_connect(addr, tls, proto).await.unwrap()
}

/// [`connect`], with failures returned rather than panicking.
pub async fn try_connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    proto: Proto,
) -> Result<Connection, String> {
    let mut config = (**tls).clone();
    config.alpn_protocols = match proto {
        Proto::H1 => vec![b"http/1.1".to_vec()],
        Proto::H2 => vec![b"h2".to_vec()],
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let tls_version = session.protocol_version();
    let io = hyper_util::rt::TokioIo::new(stream);
    let conn = match proto {
        Proto::H1 => {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Conn::H1(send)
        }
        Proto::H2 => {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Conn::H2(send)
        }
    };
    Ok(Connection {
        conn,
        alpn,
        tls_version,
        authority: format!("localhost:{}", addr.port()),
    })
}

impl Connection {
    /// The HTTP/1.1 request sender.
    pub fn into_h1_sender(self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        match self.conn {
            Conn::H1(s) => s,
            Conn::H2(_) => panic!("not an HTTP/1.1 connection"),
        }
    }

    /// The HTTP/2 request sender, which can be cloned to run requests concurrently.
    pub fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        match &self.conn {
            Conn::H2(s) => s.clone(),
            Conn::H1(_) => panic!("not an HTTP/2 connection"),
        }
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.try_send(method, path, headers, body).await.unwrap()
    }

    /// [`Connection::send`], with transport failures returned rather than panicking.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let uri = match &self.conn {
            Conn::H1(_) => path.to_string(),
            Conn::H2(_) => format!("https://{}{path}", self.authority),
        };
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        if matches!(self.conn, Conn::H1(_)) {
            builder = builder.header("host", &self.authority);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body.into())).unwrap();
        let response = match &mut self.conn {
            Conn::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(request).await.map_err(|e| e.to_string())?
            }
            Conn::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(request).await.map_err(|e| e.to_string())?
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
            alpn: self.alpn.clone(),
            tls_version: self.tls_version,
        })
    }
}

/// One request on a fresh connection.
pub async fn send(
    g: &Gateway,
    proto: Proto,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    connect(g.https, &g.tls, proto)
        .await
        .send(method, path, headers, body)
        .await
}

pub async fn infer(g: &Gateway, proto: Proto, key: &str, model: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("x-api-key", key), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    send(
        g,
        proto,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &headers,
        example(),
    )
    .await
}

/// The local-pool part of most test configs.
pub const LOCAL_POOLS: &str = "\
pools:
  cancer-v1: {local: {model: breast-cancer, version: 1}}
  cancer-v2: {local: {model: breast-cancer, version: 2}}
  digits-v1: {local: {model: digits, version: 1}}
";

/// `GET` on the admin listener: status and body.
pub async fn admin_get(g: &Gateway, path: &str) -> (u16, String) {
    admin_get_at(&g.admin.to_string(), path).await
}

/// [`admin_get`] for an admin listener at `admin` ("host:port"), such as the binary's.
pub async fn admin_get_at(admin: &str, path: &str) -> (u16, String) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{admin}{path}").parse().unwrap();
    let r = client.get(uri).await.unwrap();
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// The value of a series in the admin listener's scrape (`name{labels}`, labels in
/// Prometheus' sorted order), summed over the lines that start with it; 0 when absent.
pub async fn metric(g: &Gateway, series: &str) -> f64 {
    let (_, scrape) = admin_get(g, "/metrics").await;
    series_in(&scrape, series)
}

/// [`metric`] in a scrape already taken.
pub fn series_in(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// `example()` sent to breast-cancer with `key`.
pub async fn send_example(conn: &mut Connection, key: &str) -> Reply {
    conn.send(
        "POST",
        "/v2/models/breast-cancer/infer",
        &[("x-api-key", key)],
        example(),
    )
    .await
}

/// Resident memory of this process, in KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The `gateway` binary of this build.
pub fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

/// Runs `gateway run` until it says it is serving; returns the child and what it printed.
/// A routes.yaml for the `gateway` binary, written in `dir`: listeners on free loopback ports,
/// a development certificate and key made on first run, rate limits out of the way. `server`
/// is what goes inside `server: {…}`; `pools_and_routes` the rest of the file. Returns the
/// file and the https and admin ports.
pub fn binary_config(dir: &Path, server: &str, pools_and_routes: &str) -> (PathBuf, u16, u16) {
    let (https, admin) = (free_port(), free_port());
    let text = format!(
        "listen: {{https: \"127.0.0.1:{https}\", admin: \"127.0.0.1:{admin}\"}}\n\
         tls: {{cert: certs/server.crt, key: certs/server.key, generate_dev_cert: true}}\n\
         auth: {{keys_file: certs/api-keys.yaml, create_dev_key: true}}\n\
         server: {{{server}}}\n\
         rate_limits: {{default: {{per_second: 100000, burst: 100000}}}}\n\
         models_dir: {}\n{pools_and_routes}",
        repo().join("models").display()
    );
    let file = dir.join("routes.yaml");
    std::fs::write(&file, text).unwrap();
    (file, https, admin)
}

pub fn run_until_serving(config: &std::path::Path) -> (std::process::Child, String) {
    run_until_serving_with(config, &[], Stdio::null())
}

/// [`run_until_serving`] with environment variables set and the log (stderr) sent to `log`.
pub fn run_until_serving_with(
    config: &std::path::Path,
    env: &[(&str, &str)],
    log: Stdio,
) -> (std::process::Child, String) {
    let mut command = gateway();
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied());
    until_serving(command, log)
}

/// Runs `command` (one that ends up running the gateway) until it prints "serving"; its stdout
/// so far. stderr goes to `log`.
pub fn until_serving(mut command: Command, log: Stdio) -> (std::process::Child, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("serving https://") {
                return (child, printed);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("gateway did not start:\n{printed}");
}

pub fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    // SIGTERM: graceful shutdown.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every held-out row of a bundled dataset with its true label
/// (`models/testdata/<dataset>-heldout.json`, written by `models/train.py`).
pub fn heldout_rows(dataset: &str) -> (Vec<Vec<f32>>, Vec<i64>) {
    let text =
        std::fs::read_to_string(repo().join(format!("models/testdata/{dataset}-heldout.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"]
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
        .collect();
    let labels = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    (rows, labels)
}

/// The breast-cancer test vectors: held-out rows and stable's labels for them.
pub fn testdata_rows() -> (Vec<Vec<f32>>, Vec<i64>) {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/testdata/breast-cancer-1.json")).unwrap(),
    )
    .unwrap();
    let rows = d["input"]["data"]
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
        .collect();
    let labels = d["expected"]["label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_i64().unwrap())
        .collect();
    (rows, labels)
}

/// Rows on the way from a benign to a malignant sample: near the decision boundary two
/// different models are bound to disagree on some of them.
pub fn boundary_rows() -> Vec<Vec<f32>> {
    let (rows, labels) = testdata_rows();
    let of = |class: i64| -> Vec<&Vec<f32>> {
        rows.iter()
            .zip(&labels)
            .filter(|(_, l)| **l == class)
            .map(|(r, _)| r)
            .take(6)
            .collect()
    };
    let mut out = Vec::new();
    for a in of(0) {
        for b in of(1) {
            for step in 1..10 {
                let t = step as f32 / 10.0;
                out.push(a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect());
            }
        }
    }
    out
}

/// An inference request for one breast-cancer row.
pub fn row_body(row: &[f32]) -> String {
    serde_json::json!({"inputs": [{"name": "input", "shape": [1, row.len()], "datatype": "FP32", "data": row}]})
        .to_string()
}
