//! Putting the gateway together: config → first-run files (dev certificate, dev key) →
//! snapshot (pools loaded) → a pingora server with the client listener (TLS), the admin
//! listener and the background upkeep. Nothing here is global: tests start several gateways
//! in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::keys::{self, KeyStore};
use crate::config::{self, Config};
use crate::http::tls;
use crate::ops::admin::Admin;
use crate::ops::upkeep::Maintenance;
use crate::reload::watch::{FileWatch, SignalPipe};
use crate::reload::{self, Reloader};
use crate::rollout::{Rollouts, SystemClock};
use crate::routing::snapshot::Snapshot;
use crate::service::Gateway;
use crate::shadow::store::Recorder;
use crate::shadow::{Mirror, ShadowRuntime};
use crate::telemetry::metrics::Metrics;
use tokio::sync::broadcast::error::RecvError;

/// Things the first run made that the operator must hear about once.
#[derive(Debug, Default)]
pub struct FirstRun {
    /// The CA to trust (`curl --cacert`), when a development certificate was made.
    pub dev_ca: Option<PathBuf>,
    /// `(key, key id, keys file)` when a development key was made. The only time it is shown.
    pub dev_key: Option<(String, String, PathBuf)>,
}

/// Loads the config, makes the development certificate and key where the config allows and
/// they are missing, then loads every pool.
pub fn prepare(config_path: &Path) -> Result<(Snapshot, FirstRun), String> {
    let mut config = config::load(config_path).map_err(|e| config::format_errors(&e))?;
    let mut first = FirstRun::default();
    if config.generate_dev_cert
        && let tls::DevCert::Generated { ca } = tls::ensure_dev_cert(&config.tls_cert, &config.tls_key)?
    {
        first.dev_ca = Some(ca);
    }
    if config.keys.is_none() && config.create_dev_key {
        let (key, id) = keys::add_key(&config.keys_file, "dev", "default")?;
        first.dev_key = Some((key, id, config.keys_file.clone()));
        config.keys = Some(KeyStore::load(&config.keys_file).map_err(|e| config::format_errors(&e))?);
    }
    let snapshot = Snapshot::build(config).map_err(|e| config::format_errors(&e))?;
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
    connections: Arc<crate::admission::connections::Connections>,
    recorder: Recorder,
    shadow_runtime: ShadowRuntime,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    watch: Option<FileWatch>,
    grace: Duration,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

/// How the process starts besides its config.
#[derive(Default)]
pub struct StartOptions {
    /// Take the listening sockets over from a running gateway (pingora's graceful upgrade)
    /// instead of binding them: the old process hands them over on SIGQUIT.
    pub upgrade: bool,
    /// Required (`Authorization: Bearer …` or `x-admin-token`) on the admin listener's
    /// `/admin/…` paths; must be set when the admin listener is not on a loopback address.
    pub admin_token: Option<String>,
    /// SIGHUP as caught by the process before it printed anything (see [`SignalPipe`]); the
    /// server catches it itself when this is `None` (an embedded gateway).
    pub hangups: Option<SignalPipe>,
}

/// Builds the pingora server for a snapshot.
pub fn build(snapshot: Snapshot) -> Result<GatewayServer, String> {
    build_with(snapshot, StartOptions::default())
}

pub fn build_with(snapshot: Snapshot, options: StartOptions) -> Result<GatewayServer, String> {
    let Config {
        https,
        admin,
        threads,
        shutdown_grace,
        ..
    } = snapshot.config.clone();
    if !admin.ip().is_loopback() && options.admin_token.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "listen.admin is {admin}, reachable from other machines, and no admin token is set: set GATEWAY_ADMIN_TOKEN (its /admin/ paths then need `Authorization: Bearer <token>`), or listen on 127.0.0.1"
        ));
    }
    if !options.upgrade {
        check_bindable(https, "https")?;
        check_bindable(admin, "admin")?;
    }
    let tls_read = crate::reload::tls_hash(&snapshot.config);
    let certs = tls::CertResolver::new(tls::load_certified_key(
        &snapshot.config.tls_cert,
        &snapshot.config.tls_key,
    )?);
    let tls = tls::settings(certs.clone())?;

    let conf = ServerConf {
        threads,
        // One single-threaded tokio runtime per I/O thread, each connection on one of them
        // (as nginx's workers): no cross-thread queues or wake-ups on the request path.
        // Measured on the proxy benchmark with one I/O thread: 15% less CPU per request than
        // tokio's work-stealing scheduler.
        work_stealing: false,
        // pingora's own wait after SIGTERM is only the upper bound: `run` returns as soon as
        // the requests in flight are done (see there). Never pingora's 300 s default.
        grace_period_seconds: Some(shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: snapshot.config.upgrade_sock.to_string_lossy().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: options.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new());
    let recorder = Recorder::start(&snapshot.config.shadow)
        .map_err(|e| format!("shadow store (shadow.store in the config): {e}"))?;
    let shadow_runtime = ShadowRuntime::start()?;
    let connector = Arc::new(pingora::connectors::TransportConnector::new(None));
    let watch_files = snapshot.config.watch;
    let state = Arc::new(ArcSwap::from_pointee(snapshot));
    let pools = state.clone();
    metrics.watch_pools(Box::new(move || {
        let snap = pools.load();
        snap.pools
            .iter()
            .filter_map(|(name, backend)| match backend {
                crate::routing::snapshot::Backend::Local(pool) => Some((name.clone(), pool.stats())),
                _ => None,
            })
            .collect()
    }));
    let rollouts = Rollouts::new(
        Some(state.load().config.rollout_state.clone()),
        Arc::new(SystemClock::default()),
        metrics.clone(),
    );
    let reloader = Reloader::new(state.clone(), certs, tls_read, metrics.clone(), rollouts.clone());
    // Rollouts in the config start (or resume from their state file) before the first request.
    reloader.apply_rollouts();
    let watch = if watch_files {
        Some(reload::watch::start(reloader.clone())?)
    } else {
        None
    };

    let observed = Arc::new(crate::telemetry::observed::Observed::default());
    let quality = crate::quality::Quality::new(
        &state.load().config.quality.feedback,
        metrics.clone(),
        Arc::new(crate::quality::SystemWallClock),
    );
    let connections =
        crate::admission::connections::Connections::new(accept_rules(state.clone()), metrics.clone());
    let budget = Arc::new(crate::admission::budget::Budget::default());
    let idle = state.load().config.limits.idle_timeout;
    let gateway = Gateway {
        state: state.clone(),
        metrics: metrics.clone(),
        connector,
        mirror: Mirror::new(
            recorder.clone(),
            metrics.clone(),
            &shadow_runtime,
            rollouts.clone(),
            quality.clone(),
        ),
        observed: observed.clone(),
        fallback_logged: Default::default(),
        rollouts: rollouts.clone(),
        closing: Default::default(),
        budget: budget.clone(),
        connections: connections.clone(),
        server_options: crate::service::connection::server_options(idle),
        quality: quality.clone(),
    };
    let mut proxy = Service::new("gateway".to_string(), crate::service::Front(Arc::new(gateway)));
    // Every accepted connection is counted (and refused over the limit), and a load
    // balancer's PROXY header read, before its TLS handshake.
    proxy
        .endpoints()
        .set_pre_tls_callback(Arc::new(crate::admission::connections::Admit(
            connections.clone(),
        )));
    // A 16 KiB read buffer under TLS (pingora's default is 64 KiB): it holds a whole TLS
    // record, which is what rustls reads at a time, and each kept-alive connection costs
    // 48 KiB less (1,000 idle connections after one request each: 101 MiB of resident
    // memory with 64 KiB, 56 MiB with 16 KiB; a one-off measurement, docs/limits.md).
    proxy.add_listener(
        pingora::listeners::ListenerConfig::tcp(https.to_string())
            .tls(tls)
            .l4_buffer(pingora::listeners::L4BufferSettings::default().read(16 * 1024)),
    );

    let admin_app = Admin {
        state: state.clone(),
        metrics: metrics.clone(),
        recorder: recorder.clone(),
        reloader: reloader.clone(),
        observed: observed.clone(),
        token: options.admin_token.clone(),
        connections: connections.clone(),
        budget,
        quality: quality.clone(),
    };
    let mut admin_service = Service::new("admin".to_string(), HttpServer::new_app(admin_app));
    admin_service.add_tcp(&admin.to_string());

    let upkeep = background_service(
        "maintenance",
        Maintenance {
            state: state.clone(),
            observed: observed.clone(),
            connections: connections.clone(),
            quality,
            rollouts: rollouts.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin_service);
    server.add_service(upkeep);
    server.add_service(background_service(
        "rollouts",
        crate::reload::ticker::Ticker(reloader.clone()),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        match options.hangups {
            Some(hangups) => reload::watch::HangupReload::new(reloader.clone(), hangups),
            None => reload::watch::HangupReload::new(reloader.clone(), catch(libc::SIGHUP, "SIGHUP")?),
        },
    ));
    Ok(GatewayServer {
        server,
        state,
        connections,
        recorder,
        shadow_runtime,
        metrics,
        reloader,
        watch,
        grace: shutdown_grace,
        https,
        admin,
    })
}

impl GatewayServer {
    /// The config snapshot in force; swapping it is how a reload takes effect.
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        self.state.clone()
    }

    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Serves until `shutdown` fires. Then: the listeners stop accepting; connections drain
    /// (requests in flight finish; kept-alive HTTP/1.1 ones answer their next request with
    /// `Connection: close`, HTTP/2 ones get a GOAWAY), for up to `server.shutdown_grace_s`,
    /// and it returns once none has been open for [`QUIET`]; shadow copies in flight get a
    /// moment to land, and the shadow store writes everything it accepted.
    ///
    /// For a program that embeds the gateway (the tests do): pingora's own thread goes on
    /// sleeping out `server.shutdown_grace_s` after this returns, and until then about 11
    /// threads and 32 file descriptors of this server stay (measured by starting and dropping
    /// gateways in a loop, 2026-12-06). Copies are admitted by the whole process's spare CPU
    /// (docs/shadows.md), so the embedding program's own work counts as the gateway's
    /// foreground.
    pub fn run(self, shutdown: Box<dyn ShutdownSignalWatch + Send>) {
        let GatewayServer {
            server,
            state,
            connections,
            recorder,
            shadow_runtime,
            metrics,
            reloader,
            watch,
            grace,
            ..
        } = self;
        let mut phases = server.watch_execution_phase();
        // pingora sleeps its whole grace period after a shutdown signal; it does so on a
        // thread of its own, and this one ends the wait early once nothing is left to drain.
        let pingora = std::thread::Builder::new()
            .name("pingora-main".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: shutdown,
                })
            })
            .expect("spawning the server thread");
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::ShutdownStarted) | Err(RecvError::Closed) => break,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
        drop(watch);
        let started = Instant::now();
        let deadline = started + grace;
        let handshake = state.load().config.limits.handshake_timeout;
        let busy = || metrics.in_flight.get() > 0 || connections.open() > 0;
        if busy() {
            tracing::info!(
                in_flight = metrics.in_flight.get(),
                connections = connections.open(),
                grace = ?grace,
                "stopped accepting; draining connections"
            );
        }
        // Quiet means nothing open for `QUIET` in a row, not at one look: pingora reports the
        // shutdown as soon as it has told the listeners, whose tasks (on other threads) may
        // still accept a connection, and an accepted connection is counted only once its task
        // runs. Leaving at the first quiet look could reset such a connection (after an
        // upgrade the new process would have served it).
        let mut quiet_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if busy() {
                quiet_since = None;
                // The upkeep loop has stopped: connections still in their TLS handshake are
                // held to their deadline here.
                connections.sweep(handshake);
            } else if now.duration_since(*quiet_since.get_or_insert(now)) >= QUIET {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if busy() {
            tracing::warn!(
                in_flight = metrics.in_flight.get(),
                connections = connections.open(),
                "grace period over; cutting what is left"
            );
        } else {
            tracing::info!(waited = ?started.elapsed(), "connections drained");
        }
        // Shadows in flight get a moment to land in the store, which then writes everything.
        shadow_runtime
            .shutdown(Duration::from_secs(2).min(deadline.saturating_duration_since(Instant::now())));
        recorder.close();
        drop(reloader);
        drop(state);
        if pingora.is_finished() {
            let _ = pingora.join();
        }
        // Otherwise pingora's thread is still in its fixed grace sleep with nothing left to
        // do; the process exits without it (embedders: its runtimes end when it wakes).
    }
}

/// How long nothing may be open before a stopping gateway is drained: a listener's task sees
/// the shutdown and a just-accepted connection's task counts it within microseconds unless
/// the machine stalls them; this noisy 2-core machine has stalled tasks for tens of ms.
const QUIET: Duration = Duration::from_millis(250);

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

/// SIGQUIT (hand the listeners over), SIGTERM (drain and stop) and SIGINT (stop now), caught
/// from the moment [`UnixSignals::catch`] returns. pingora's own watcher registers its
/// handlers only once its services run, after the listeners answer: a SIGTERM sent as soon as
/// the gateway says "serving" could meet the default action and end it undrained.
pub struct UnixSignals([SignalPipe; 3]);

/// [`SignalPipe::catch`] with the signal's name in the error.
pub fn catch(signal: libc::c_int, name: &str) -> Result<SignalPipe, String> {
    SignalPipe::catch(signal).map_err(|e| format!("catching {name}: {e}"))
}

impl UnixSignals {
    pub fn catch() -> Result<Self, String> {
        Ok(UnixSignals([
            catch(libc::SIGQUIT, "SIGQUIT")?,
            catch(libc::SIGTERM, "SIGTERM")?,
            catch(libc::SIGINT, "SIGINT")?,
        ]))
    }
}

#[async_trait]
impl ShutdownSignalWatch for UnixSignals {
    async fn recv(&self) -> ShutdownSignal {
        let [quit, term, int] = &self.0;
        tokio::select! {
            _ = quit.wait() => ShutdownSignal::GracefulUpgrade,
            _ = term.wait() => ShutdownSignal::GracefulTerminate,
            _ = int.wait() => ShutdownSignal::FastShutdown,
        }
    }
}

/// What a new connection is held to, read from the snapshot in force at its accept.
fn accept_rules(state: Arc<ArcSwap<Snapshot>>) -> crate::admission::connections::Rules {
    Box::new(move |peer| {
        let snap = state.load();
        let config = &snap.config;
        crate::admission::connections::AcceptRules {
            max_connections: config.limits.max_connections,
            handshake_timeout: config.limits.handshake_timeout,
            proxy_header: peer.is_some_and(|p| config.client_address.expects_proxy_header(p)),
        }
    })
}
