//! Model servers for the gateway to call: a real `inference-server` ([`Upstream`]), a bad one
//! ([`FakeUpstream`]), and a local pool whose runtime can be broken on demand.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{free_port, repo};

/// What an [`Upstream`] speaks.
#[derive(Clone, Copy, Debug)]
pub enum Speaks {
    Rest,
    Grpc,
}

fn bundled() -> inference::ModelRepository {
    inference::ModelRepository::load(&repo().join("models"), &inference::PoolConfig::default()).unwrap()
}

// The slow model of `inference`'s own tests.
#[path = "../../../inference/tests/common/slow.rs"]
mod slow_model;

fn slow() -> inference::ModelRepository {
    slow_model::slow_repo()
}

/// A real `inference-server` (REST or gRPC) on an ephemeral port, in its own runtime thread.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Upstream {
        Self::launch(port, bundled, Speaks::Rest)
    }

    /// `inference-server --grpc-listen` on an ephemeral port.
    pub fn start_grpc() -> Upstream {
        Self::launch(free_port(), bundled, Speaks::Grpc)
    }

    pub fn start_grpc_on(port: u16) -> Upstream {
        Self::launch(port, bundled, Speaks::Grpc)
    }

    /// One model, "slow" (version 1, input and output `x`: FP32 [-1, 1]), that takes 300 ms
    /// per request: for timeouts and deadlines.
    pub fn start_slow(speaks: Speaks) -> Upstream {
        Self::launch(free_port(), slow, speaks)
    }

    fn launch(port: u16, models: fn() -> inference::ModelRepository, speaks: Speaks) -> Upstream {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let repo = Arc::new(models());
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
                ready_tx.send(listener.local_addr().unwrap()).unwrap();
                let stop = async move {
                    let _ = rx.await;
                };
                match speaks {
                    Speaks::Rest => {
                        inference::server::InferenceServer::new(repo, Default::default())
                            .serve(listener, stop)
                            .await
                    }
                    Speaks::Grpc => inference::grpc::GrpcServer::new(repo, Default::default())
                        .serve(listener, stop)
                        .await
                        .unwrap(),
                }
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("inference-server started");
        Upstream {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("upstream thread panicked");
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How a [`FakeUpstream`] answers inference requests (health checks always get 200).
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Answers after this long (with a 500).
    Sleep(Duration),
    /// Answers after this long with a valid 200 (label 1 for one row).
    Slow(Duration),
    /// 500 with a JSON error.
    Fail,
    /// Resets the connection once the request is read.
    Reset,
}

/// What [`Misbehaviour::Slow`] answers, as a full HTTP response.
pub const SLOW_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 112\r\n\r\n{\"model_name\":\"slow\",\"model_version\":\"1\",\"outputs\":[{\"name\":\"label\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[1]}]}";

/// A bad Open Inference Protocol server, for shadows that must not hurt the primary. It
/// stands for another machine: its own runtime thread, at the idle priority the gateway
/// gives its own shadow work, so that it does not take the test client's CPU.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeUpstream {
    pub async fn start(how: Misbehaviour) -> FakeUpstream {
        Self::start_at(how, "127.0.0.1:0").await
    }

    /// [`Self::start`] on a given address: one of several servers behind a name.
    pub async fn start_at(how: Misbehaviour, bind: &str) -> FakeUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(inference::priority::idle)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            let std = std::net::TcpListener::bind(bind).unwrap();
            std.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(std).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request: headers, then content-length bytes of body.
                        let mut chunk = [0u8; 8192];
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap_or(0));
                        while buf.len() < head_end + length {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + length);
                        let answer: &[u8] = if head.starts_with("get ") {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            match how {
                                Misbehaviour::Sleep(d) => {
                                    tokio::time::sleep(d).await;
                                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\n{}"
                                }
                                Misbehaviour::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    SLOW_ANSWER
                                }
                                Misbehaviour::Fail => {
                                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"error\":\"it broke\"}"
                                }
                                Misbehaviour::Reset => {
                                    let _ = tcp.set_zero_linger();
                                    return;
                                }
                            }
                        };
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A local pool whose ONNX Runtime breaks while `broken` is set: every run fails, the
/// warm-up probe's too (what a model that loaded but cannot run any more does; no input can
/// cause that, so it stands in for ORT's own failures). Otherwise the real model answers.
pub fn breakable_pool(
    model: &Path,
    name: &str,
    broken: Arc<std::sync::atomic::AtomicBool>,
) -> proxy::routing::snapshot::Backend {
    struct Breakable {
        real: inference::pool::OrtRunner,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }
    impl inference::Runner for Breakable {
        fn run(&mut self, inputs: &[inference::Tensor]) -> Result<Vec<inference::Tensor>, String> {
            if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("ONNX Runtime failed (injected by the test)".into());
            }
            self.real.run(inputs)
        }
    }
    let session = inference::model::open_session(model, 1).unwrap();
    let meta = inference::model::metadata_from_session(&session, name, "1").unwrap();
    let runner = Breakable {
        real: inference::pool::OrtRunner::new(session),
        broken,
    };
    proxy::routing::snapshot::Backend::Local(Arc::new(inference::Pool::with_runners(
        meta,
        inference::PoolConfig::default(),
        vec![Box::new(runner)],
    )))
}
