//! Putting the gateway together: config → first-run files (dev certificate, dev key) →
//! snapshot (pools loaded) → a pingora server with the client listener (TLS), the admin
//! listener and the background upkeep. Nothing here is global: tests start several gateways
//! in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, Config, ConfigError};
use crate::keys::{self, KeyStore};
use crate::maintenance::Maintenance;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiters;
use crate::service::Gateway;
use crate::shadow::store::Recorder;
use crate::shadow::{Mirror, ShadowRuntime};
use crate::state::{Backend, Snapshot};
use crate::tls;

/// Things the first run made that the operator must hear about once.
#[derive(Debug, Default)]
pub struct FirstRun {
    /// The CA to trust (`curl --cacert`), when a development certificate was made.
    pub dev_ca: Option<PathBuf>,
    /// `(key, key id, keys file)` when a development key was made. The only time it is shown.
    pub dev_key: Option<(String, String, PathBuf)>,
}

pub fn format_errors(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    format!("{} problem(s):\n{}", errors.len(), lines.join("\n"))
}

/// Loads the config, makes the development certificate and key where the config allows and
/// they are missing, then loads every pool.
pub fn prepare(config_path: &Path) -> Result<(Snapshot, FirstRun), String> {
    let mut config = config::load(config_path).map_err(|e| format_errors(&e))?;
    let mut first = FirstRun::default();
    if config.generate_dev_cert
        && let tls::DevCert::Generated { ca } = tls::ensure_dev_cert(&config.tls_cert, &config.tls_key)?
    {
        first.dev_ca = Some(ca);
    }
    if config.keys.is_none() && config.create_dev_key {
        let (key, id) = keys::add_key(&config.keys_file, "dev", "default")?;
        first.dev_key = Some((key, id, config.keys_file.clone()));
        config.keys = Some(KeyStore::load(&config.keys_file).map_err(|e| format_errors(&e))?);
    }
    let snapshot = Snapshot::build(config).map_err(|e| format_errors(&e))?;
    Ok((snapshot, first))
}

/// Checks that an address can be listened on, so that a taken port is a clear error and not
/// a panic inside pingora's listener set-up.
fn check_bindable(addr: SocketAddr, what: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr).map(drop).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr} ({what}): the address is in use — is another gateway running? Change listen.{what} in the config.")
        } else {
            format!("cannot listen on {addr} ({what}): {e}")
        }
    })
}

/// A built gateway, ready to run.
pub struct GatewayServer {
    server: Server,
    state: Arc<ArcSwap<Snapshot>>,
    recorder: Recorder,
    shadow_runtime: ShadowRuntime,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

/// Builds the pingora server for a snapshot.
pub fn build(snapshot: Snapshot) -> Result<GatewayServer, String> {
    let Config {
        https,
        admin,
        threads,
        ..
    } = snapshot.config.clone();
    check_bindable(https, "https")?;
    check_bindable(admin, "admin")?;
    let tls = tls::settings(&snapshot.config.tls_cert, &snapshot.config.tls_key)?;

    // Learn remote pools' health (and signatures) before the first request, not after it.
    let remotes: Vec<_> = snapshot
        .pools
        .values()
        .filter_map(|b| {
            if let Backend::Remote(r) = b {
                Some(r.clone())
            } else {
                None
            }
        })
        .collect();
    if !remotes.is_empty() {
        // On a thread of its own: the caller may itself be inside an async runtime.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        for r in &remotes {
                            r.maintain(true).await;
                        }
                    });
                    Ok::<(), String>(())
                })
                .join()
                .map_err(|_| "the first health check panicked".to_string())?
        })?;
    }

    let conf = ServerConf {
        threads,
        // Stop accepting at once on SIGTERM, then give requests in flight up to 10 s.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(10),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let limiters = Arc::new(RateLimiters::new(&snapshot.config.rate_limits));
    let metrics = Arc::new(Metrics::new());
    let recorder = Recorder::start(&snapshot.config.shadow)
        .map_err(|e| format!("shadow store (shadow.store in the config): {e}"))?;
    let shadow_runtime = ShadowRuntime::start()?;
    let connector = Arc::new(pingora::connectors::http::Connector::new(None));
    let state = Arc::new(ArcSwap::from_pointee(snapshot));

    let gateway = Gateway {
        state: state.clone(),
        limiters: limiters.clone(),
        metrics: metrics.clone(),
        connector,
        mirror: Mirror::new(recorder.clone(), metrics.clone(), &shadow_runtime),
    };
    let mut proxy = pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "gateway");
    proxy.add_tls_with_settings(&https.to_string(), None, tls);

    let admin_app = Admin {
        state: state.clone(),
        metrics,
        limiters: limiters.clone(),
        recorder: recorder.clone(),
    };
    let mut admin_service = Service::new("admin".to_string(), HttpServer::new_app(admin_app));
    admin_service.add_tcp(&admin.to_string());

    let upkeep = background_service(
        "maintenance",
        Maintenance {
            state: state.clone(),
            limiters,
        },
    );

    server.add_service(proxy);
    server.add_service(admin_service);
    server.add_service(upkeep);
    Ok(GatewayServer {
        server,
        state,
        recorder,
        shadow_runtime,
        https,
        admin,
    })
}

impl GatewayServer {
    /// The config snapshot in force; swapping it is how a reload takes effect.
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        self.state.clone()
    }

    /// Serves until `shutdown` fires, then lets requests in flight finish. Every pool drains
    /// its queue when the last snapshot referring to it is dropped; the shadow store writes
    /// every comparison it accepted before this returns.
    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch>) {
        let GatewayServer {
            server,
            state,
            recorder,
            shadow_runtime,
            ..
        } = self;
        server.run(RunArgs {
            shutdown_signal: shutdown,
        });
        // Shadows in flight get a moment to land in the store, which then writes everything.
        shadow_runtime.shutdown(Duration::from_secs(2));
        recorder.close();
        drop(state);
    }
}

/// A shutdown trigger for embedding (tests): fires on [`ShutdownHandle::shutdown`].
pub struct ManualShutdown(Arc<tokio::sync::Notify>);

#[derive(Clone)]
pub struct ShutdownHandle(Arc<tokio::sync::Notify>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.notify_one();
    }
}

pub fn manual_shutdown() -> (ManualShutdown, ShutdownHandle) {
    let n = Arc::new(tokio::sync::Notify::new());
    (ManualShutdown(n.clone()), ShutdownHandle(n))
}

#[async_trait]
impl ShutdownSignalWatch for ManualShutdown {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::GracefulTerminate
    }
}
