//! Shared by the integration tests: the real model repository, a real server on an
//! ephemeral port, and a small HTTP client.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use inference::server::{InferenceServer, ServerOptions};
use inference::{ModelRepository, PoolConfig};

mod slow;
#[allow(unused_imports)] // only the overload and deadline tests use it
pub use slow::slow_repo;

/// A batchable test model `echo/1`: input `x` and output `y`, FP32 `[-1, 2]`.
pub fn echo_meta() -> inference::ModelMetadata {
    let spec = |name: &str| inference::TensorSpec {
        name: name.into(),
        datatype: inference::DataType::F32,
        shape: vec![-1, 2],
    };
    inference::ModelMetadata {
        name: "echo".into(),
        version: "1".into(),
        platform: "test",
        inputs: vec![spec("x")],
        outputs: vec![spec("y")],
        batchable: true,
    }
}

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// The test vectors `models/train.py` wrote: held-out rows and Python onnxruntime's outputs.
pub fn vectors(name: &str, version: u64) -> serde_json::Value {
    let path = models_dir().join(format!("testdata/{name}-{version}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn load(dir: PathBuf, config: PoolConfig) -> ModelRepository {
    ModelRepository::load(&dir, &config).unwrap_or_else(|errors| {
        panic!(
            "loading {}: {}",
            dir.display(),
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// A running server; stops (and waits for its requests) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(repo: ModelRepository, options: ServerOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = InferenceServer::new(Arc::new(repo), options);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, waits for requests in flight; panics in the server surface here.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.expect("server task panicked");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` message of an error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {:?}", self.body))
            .to_string()
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut builder = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = client
        .request(builder.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, "GET", url, &[], Bytes::new()).await
}

pub async fn post_json(client: &HttpClient, url: &str, body: &serde_json::Value) -> Reply {
    send(
        client,
        "POST",
        url,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// An Open Inference Protocol request for one FP32 input called `input`.
pub fn infer_body(rows: &[Vec<f64>]) -> serde_json::Value {
    let cols = rows.first().map_or(0, Vec::len);
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    serde_json::json!({"inputs": [{"name": "input", "shape": [rows.len(), cols], "datatype": "FP32", "data": data}]})
}

/// The rows of a test-vector file.
pub fn vector_rows(v: &serde_json::Value) -> Vec<Vec<f64>> {
    v["input"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The body limit [`server`] sets: small, so that tests cross it cheaply.
pub const SMALL_LIMIT: usize = 64 * 1024;

/// The bundled models plus the test fixtures, in one repository.
pub async fn server() -> TestServer {
    let mut repo = load(models_dir(), PoolConfig::default());
    let fixtures = load(fixtures_dir(), PoolConfig::default());
    for (name, version, pool) in fixtures.iter() {
        repo.insert(name, version, pool.clone());
    }
    TestServer::start(
        repo,
        ServerOptions {
            max_body_bytes: SMALL_LIMIT,
            ..ServerOptions::default()
        },
    )
    .await
}

/// The example request `models/` ships.
pub fn example() -> serde_json::Value {
    let text = std::fs::read_to_string(models_dir().join("example.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
