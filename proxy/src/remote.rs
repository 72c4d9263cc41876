//! `http` pools: remote Open Inference Protocol servers (our `inference-server`, or Triton)
//! reached through pingora's upstream machinery: round-robin over the healthy endpoints,
//! active HTTP health checks, connect and read timeouts, kept-alive upstream connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use inference::{DataType, ModelMetadata, TensorSpec};
use parking_lot::Mutex;
use pingora::lb::LoadBalancer;
use pingora::lb::health_check::HttpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::upstreams::peer::HttpPeer;

use crate::config::HttpSpec;

pub struct RemotePool {
    pub name: String,
    pub spec: HttpSpec,
    lb: LoadBalancer<RoundRobin>,
    /// The upstream's model signature, fetched once an endpoint answers; the simple JSON
    /// endpoint needs it to build requests.
    metadata: ArcSwapOption<ModelMetadata>,
    last_check: Mutex<Option<Instant>>,
}

impl RemotePool {
    pub fn new(name: &str, spec: HttpSpec) -> Result<RemotePool, String> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(spec.endpoints.iter().map(|a| a.to_string()))
            .map_err(|e| format!("pool {name}: {e}"))?;
        let mut hc = HttpHealthCheck::new("localhost", false);
        hc.req = pingora::http::RequestHeader::build("GET", spec.health_path.as_bytes(), None)
            .map_err(|e| format!("pool {name}: health check path: {e}"))?;
        hc.req
            .insert_header("host", "localhost")
            .map_err(|e| e.to_string())?;
        hc.peer_template.options.connection_timeout = Some(spec.connect_timeout);
        hc.peer_template.options.read_timeout = Some(spec.timeout.min(Duration::from_secs(2)));
        hc.consecutive_failure = 1;
        hc.consecutive_success = 1;
        lb.set_health_check(Box::new(hc));
        Ok(RemotePool {
            name: name.to_string(),
            spec,
            lb,
            metadata: ArcSwapOption::empty(),
            last_check: Mutex::new(None),
        })
    }

    /// A healthy endpoint, round-robin; `avoid` skips the one that just failed to connect.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<SocketAddr> {
        let n = self.spec.endpoints.len().max(1) * 2;
        self.lb
            .select_with(b"", n, |backend, healthy| {
                healthy && backend.addr.as_inet() != avoid.as_ref()
            })
            .and_then(|b| b.addr.as_inet().copied())
    }

    pub fn healthy_endpoints(&self) -> usize {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count()
    }

    /// The pingora peer for an endpoint, with this pool's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.spec.connect_timeout);
        peer.options.read_timeout = Some(self.spec.timeout);
        peer.options.write_timeout = Some(self.spec.timeout);
        // Kept-alive upstream connections are reused for this long when idle.
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Box::new(peer)
    }

    /// The upstream path for a protocol path's tail (`/infer`, `/ready`, ``).
    pub fn upstream_path(&self, tail: &str) -> String {
        format!(
            "/v2/models/{}/versions/{}{tail}",
            self.spec.model, self.spec.version
        )
    }

    pub fn metadata(&self) -> Option<Arc<ModelMetadata>> {
        self.metadata.load_full()
    }

    /// Runs a health check when its interval has passed (or `force`), then fetches the model
    /// signature if it is not known yet and an endpoint is up.
    pub async fn maintain(&self, force: bool) {
        let due = {
            let mut last = self.last_check.lock();
            let due = force || last.is_none_or(|t| t.elapsed() >= self.spec.health_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if !due {
            return;
        }
        self.lb.backends().run_health_check(true).await;
        if self.metadata.load().is_none()
            && let Some(addr) = self.select(None)
        {
            match fetch_metadata(addr, &self.upstream_path(""), self.spec.timeout).await {
                Ok(meta) => self.metadata.store(Some(Arc::new(meta))),
                Err(e) => tracing::warn!(pool = %self.name, "cannot fetch model metadata from {addr}: {e}"),
            }
        }
    }
}

/// `GET /v2/models/{m}/versions/{v}` from one endpoint, as a [`ModelMetadata`].
async fn fetch_metadata(addr: SocketAddr, path: &str, timeout: Duration) -> Result<ModelMetadata, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let specs = |key: &str| -> Result<Vec<TensorSpec>, String> {
        v[key]
            .as_array()
            .ok_or_else(|| format!("no {key} in the metadata"))?
            .iter()
            .map(|t| {
                Ok(TensorSpec {
                    name: t["name"].as_str().ok_or("tensor without a name")?.to_string(),
                    datatype: DataType::parse(t["datatype"].as_str().unwrap_or(""))?,
                    shape: t["shape"]
                        .as_array()
                        .ok_or("tensor without a shape")?
                        .iter()
                        .filter_map(|d| d.as_i64())
                        .collect(),
                })
            })
            .collect()
    };
    let inputs = specs("inputs")?;
    let outputs = specs("outputs")?;
    let batchable = inputs
        .iter()
        .chain(&outputs)
        .all(|s| s.shape.first() == Some(&-1));
    Ok(ModelMetadata {
        name: v["name"].as_str().unwrap_or_default().to_string(),
        version: path.rsplit('/').next().unwrap_or_default().to_string(),
        platform: "remote",
        inputs,
        outputs,
        batchable,
    })
}
