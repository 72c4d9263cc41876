//! `gateway`: run the gateway, check a config, manage API keys, read shadow reports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxy::telemetry::handshakes;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// Many small allocations cross threads (parsed tensors go to pool workers and back):
// mimalloc handles that faster than glibc malloc (measured with loadtests/).
#[global_allocator]
static GLOBAL: inference::alloc::MiMalloc = inference::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "HTTPS gateway for ML models: API keys, rate limits, canary splits, in-process ONNX Runtime pools",
    after_help = "Config reference: routes.yaml (commented). Logs: RUST_LOG (default info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: client HTTPS listener, admin listener, every pool of the config.
    ///
    /// On the first run with the default config, a development CA and a localhost
    /// certificate are made in certs/ (trust certs/ca.crt), and one development API key is
    /// made and printed once.
    ///
    /// Edits of the config, the keys file and the certificate take effect by themselves
    /// (also on SIGHUP or `POST /admin/reload`); a file that does not validate is refused and
    /// the config in force keeps serving. SIGTERM: stop accepting, finish what is in flight
    /// (up to server.shutdown_grace_s), write the shadow records, exit.
    Run {
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Take the listening sockets over from the running gateway instead of binding them
        /// (zero-downtime binary upgrade): start this, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate config files: every problem with line and column (exit 1), or a summary of
    /// routes, weights and shadows. Loads each local model to prove that it loads.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Probe a running gateway's admin listener (for container health checks, where no curl
    /// is installed): exit 0 when the path answers 200, 1 otherwise.
    Health {
        /// Admin listener address
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Which probe: live, ready or startup
        #[arg(long, default_value = "ready")]
        probe: String,
    },
    /// Progressive rollouts (a canary's `rollout:` in routes.yaml): show them, or take over.
    ///
    /// Talks to the running gateway's admin listener. `pause` keeps the weight and stops
    /// evaluating; `resume` continues from the first step at or above the weight in force
    /// (after a rollback or abort: from the first step); `promote` sets weight 100 and ends
    /// the rollout; `abort` sets weight 0 and ends it. An edit of the weight in routes.yaml
    /// takes precedence over the engine and pauses it.
    Rollout {
        /// status (every rollout), or pause, resume, promote, abort
        action: String,
        /// The route (public model name); not needed for status
        route: Option<String>,
        /// Admin listener address
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Admin token, when the gateway has one
        #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// table: for a terminal; json: `GET /admin/rollouts` as it is (every decision kept)
        #[arg(long, value_enum, default_value = "table")]
        format: StatusFormat,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// How shadow models compare with the models that answered: agreement (95% CI),
    /// probability deltas, latencies, errors, drops, confusion matrix, latest disagreements.
    ///
    /// Reads the shadow store directly, so it works whether or not the gateway is running.
    /// With several replicas, each keeps its own store: copy them out and pass them all
    /// (`--store a.sqlite3 --store b.sqlite3`, or a folder) for one merged report.
    Report {
        /// Only what happened in this last stretch of time (e.g. 15m, 1h, 2d)
        #[arg(long)]
        since: Option<String>,
        /// Only this route (public model name)
        #[arg(long)]
        route: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// The config whose shadow.store is read
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Read this store instead of the config's; repeat it (or name a folder of
        /// `*.sqlite3` files) to merge the stores of several replicas into one report
        #[arg(long)]
        store: Vec<PathBuf>,
        /// Latest disagreements listed per shadow (at most 1000)
        #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1000))]
        latest: usize,
        /// Instead of a report, write a consistent copy of the store to this file (safe while
        /// the gateway writes), to merge several replicas' stores elsewhere
        #[arg(long, value_name = "FILE", conflicts_with_all = ["since", "route", "format"])]
        export: Option<PathBuf>,
        /// Model quality instead (input drift, accuracy from feedback, the A/B verdict),
        /// asked of the running gateway's admin listener (`--admin`)
        #[arg(long, conflicts_with_all = ["since", "store", "export"])]
        quality: bool,
        /// Admin listener address, for --quality
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Admin token, when the gateway has one
        #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
    Html,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new random key: printed once, stored only as its SHA-256 digest.
    Add {
        /// Who the key belongs to (shown in logs and access records)
        #[arg(long)]
        tenant: String,
        /// Rate-limit tier (a name under rate_limits.tiers; default: the default quota)
        #[arg(long, default_value = "default")]
        tier: String,
        /// The config whose auth.keys_file receives the key
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Write to this keys file instead of the config's
        #[arg(long)]
        keys_file: Option<PathBuf>,
    },
    /// Disable a key (403 from then on); a running gateway applies it within ~2 s.
    Revoke {
        /// The key's id (key_…), as `keys list` and the access log show it
        id: String,
        #[command(flatten)]
        file: KeysFileArgs,
    },
    /// Enable a revoked key again.
    Enable {
        id: String,
        #[command(flatten)]
        file: KeysFileArgs,
    },
    /// List keys: id, tenant, tier, state (never the keys: only digests are stored).
    List {
        #[command(flatten)]
        file: KeysFileArgs,
    },
}

#[derive(clap::Args)]
struct KeysFileArgs {
    /// The config whose auth.keys_file is used
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Use this keys file instead of the config's
    #[arg(long)]
    keys_file: Option<PathBuf>,
}

/// `text` or `json`: `GATEWAY_LOG_FORMAT`, else (for `run`) the config's `server.log_format`.
fn log_format(cli: &Cli) -> String {
    if let Ok(f) = std::env::var("GATEWAY_LOG_FORMAT") {
        return f;
    }
    match &cli.command {
        Command::Run { config, .. } => loose_config(config)
            .get("server")
            .and_then(|s| s.get("log_format"))
            .and_then(|f| f.as_str())
            .unwrap_or("text")
            .to_string(),
        _ => "text".to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // `gateway check … | head` should end quietly, as Unix tools do, not panic on a closed
        // pipe. (Not for `run`: the server must see EPIPE on a socket as an error, not die.)
        // SAFETY: setting a signal disposition before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Access-log lines go through a background writer so that logging never blocks a
    // request on a slow terminal or pipe.
    let (writer, _guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,pingora=warn".into());
    let json = log_format(&cli) == "json";
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    // pingora reports failed TLS handshakes only in its log: counted for /metrics whatever
    // RUST_LOG says, and written as a summary, not a line each (telemetry::handshakes).
    let handshakes = tracing_subscriber::filter::Targets::new()
        .with_target("pingora_core::services::listening", tracing::Level::ERROR);
    let filter = tracing_subscriber::filter::FilterExt::and(filter, handshakes::PerConnectionNoise);
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(handshakes::HandshakeFailures.with_filter(handshakes))
        .init();
    let result = match cli.command {
        Command::Run { config, upgrade } => run(&config, upgrade),
        Command::Check { files } => check(&files),
        Command::Health { admin, probe } => health(&admin, &probe),
        Command::Rollout {
            action,
            route,
            admin,
            token,
            format,
        } => rollout(&action, route.as_deref(), &admin, token.as_deref(), format),
        Command::Keys {
            command:
                KeysCommand::Add {
                    tenant,
                    tier,
                    config,
                    keys_file,
                },
        } => add_key(&config, keys_file, &tenant, &tier),
        Command::Keys {
            command: KeysCommand::Revoke { id, file },
        } => set_disabled(&file, &id, true),
        Command::Keys {
            command: KeysCommand::Enable { id, file },
        } => set_disabled(&file, &id, false),
        Command::Keys {
            command: KeysCommand::List { file },
        } => list_keys(&file),
        Command::Report {
            since,
            route,
            format,
            config,
            store,
            latest,
            export,
            quality,
            admin,
            token,
        } => match export {
            Some(out) => export_store(&config, store, &out),
            None if quality => quality_report(&admin, token.as_deref(), route.as_deref(), format),
            None => report(&config, store, since.as_deref(), route, format, latest),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Path, upgrade: bool) -> Result<(), String> {
    // Before anything listens: a signal sent as soon as "serving" is printed must find these.
    let signals = proxy::server::UnixSignals::catch()?;
    let hangups = Some(proxy::server::catch(libc::SIGHUP, "SIGHUP")?);
    inference::runtime::environment()?;
    let (snapshot, first) = proxy::server::prepare(config)?;
    if let Some(ca) = &first.dev_ca {
        println!(
            "made a development CA and a certificate for localhost; trust {}",
            ca.display()
        );
    }
    let cacert = snapshot
        .config
        .tls_cert
        .parent()
        .map(|d| d.join("ca.crt"))
        .unwrap_or_default();
    if let Some((key, id, file)) = &first.dev_key {
        println!(
            "\nmade development API key {id} for tenant \"dev\" (only its SHA-256 is kept, in {}).\n\
             It is shown this once:\n\n    {key}\n\nTry:\n    curl --cacert {} -H \"x-api-key: {key}\" \\\n        https://localhost:{}/v2/models/{}/infer -d @example.json\n",
            file.display(),
            cacert.display(),
            snapshot.config.https.port(),
            snapshot
                .config
                .routes
                .keys()
                .next()
                .map_or("MODEL", String::as_str),
        );
    }
    print!("{}", snapshot.config.summary());
    if snapshot.config.routes.values().any(|r| !r.shadows.is_empty()) {
        println!(
            "shadow comparisons: {} (report: http://{}/admin/shadow/report.html, or `gateway report`)",
            snapshot.config.shadow.store.display(),
            snapshot.config.admin
        );
    }
    if snapshot.config.watch {
        println!(
            "edits to {} (weights, routes, pools), its keys file and certificate apply by themselves; errors show on http://{}/admin/config",
            snapshot.config.file.display(),
            snapshot.config.admin
        );
    }
    if upgrade {
        println!(
            "taking the listeners over from the running gateway: send it SIGQUIT (socket {})",
            snapshot.config.upgrade_sock.display()
        );
    }
    let admin_token = std::env::var("GATEWAY_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let built = proxy::server::build_with(
        snapshot,
        proxy::server::StartOptions {
            upgrade,
            admin_token,
            hangups,
        },
    )?;
    // pingora binds its listeners once running: announce "serving" once the admin listener
    // (started with the client one) answers a health check. A bare connect to the TLS port
    // would be logged as a failed handshake, so that port is not probed.
    let (https, admin) = (built.https, built.admin);
    std::thread::spawn(move || {
        for _ in 0..600 {
            if proxy::ops::client::answers(admin) {
                println!("serving https://{https} (admin: http://{admin}/metrics)");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("gateway: the listeners did not come up within 30 s");
    });
    built.run(Box::new(signals));
    println!("stopped");
    Ok(())
}

/// One request to the admin listener: (status, body).
fn admin_call(admin: &str, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    proxy::ops::client::call(admin, method, path, token, std::time::Duration::from_secs(5))
}

/// `gateway report --quality`: `/admin/quality` of the running gateway, as a table or JSON.
fn quality_report(
    admin: &str,
    token: Option<&str>,
    route: Option<&str>,
    format: ReportFormat,
) -> Result<(), String> {
    let (status, body) = admin_call(admin, "GET", "/admin/quality", token)?;
    if status != 200 {
        return Err(format!("{admin} answered {status}: {body}"));
    }
    let mut v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{admin}: {e}"))?;
    if let (Some(r), Some(routes)) = (route, v["routes"].as_object_mut()) {
        routes.retain(|name, _| name == r);
    }
    match format {
        ReportFormat::Table => print!("{}", proxy::quality::view::text(&v)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&v).expect("values serialize")),
        ReportFormat::Html => print!("{}", proxy::shadow::quality_html::section(&v)),
    }
    Ok(())
}

fn health(admin: &str, probe: &str) -> Result<(), String> {
    if !["live", "ready", "startup"].contains(&probe) {
        return Err(format!("--probe {probe:?}: one of live, ready, startup"));
    }
    match admin_call(admin, "GET", &format!("/health/{probe}"), None) {
        Ok((200, _)) => {
            println!("{probe}: ok");
            Ok(())
        }
        Ok((status, body)) => Err(format!("{probe}: {admin} answered {status}: {body}")),
        Err(e) => Err(format!("{probe}: {e}")),
    }
}

fn rollout(
    action: &str,
    route: Option<&str>,
    admin: &str,
    token: Option<&str>,
    format: StatusFormat,
) -> Result<(), String> {
    let (method, path) = match (action, route) {
        ("status", None) => ("GET", "/admin/rollouts".to_string()),
        ("status", Some(_)) => ("GET", "/admin/rollouts".to_string()),
        ("pause" | "resume" | "promote" | "abort", Some(r)) => {
            ("POST", format!("/admin/rollouts/{r}/{action}"))
        }
        ("pause" | "resume" | "promote" | "abort", None) => {
            return Err(format!("gateway rollout {action} ROUTE: which route?"));
        }
        _ => {
            return Err(format!(
                "{action:?}: one of status, pause, resume, promote, abort"
            ));
        }
    };
    let (status, body) = admin_call(admin, method, &path, token)?;
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if status != 200 {
        let message = value["error"].as_str().map_or(body.clone(), str::to_string);
        return Err(format!("{admin} answered {status}: {message}"));
    }
    use proxy::rollout::view;
    let shown = match (action, route) {
        ("status", Some(r)) => value["rollouts"]
            .get(r)
            .cloned()
            .ok_or_else(|| format!("route {r:?} has no rollout"))?,
        _ => value,
    };
    match (format, action, route) {
        (StatusFormat::Json, ..) => {
            println!("{}", serde_json::to_string_pretty(&shown).expect("JSON prints"))
        }
        (StatusFormat::Table, "status", None) => print!("{}", view::text(&shown)),
        (StatusFormat::Table, _, r) => print!("{}", view::route(r.unwrap_or("?"), &shown)),
    }
    Ok(())
}

fn check(files: &[PathBuf]) -> Result<(), String> {
    inference::runtime::environment()?;
    let mut failed = 0;
    for file in files {
        let result = proxy::config::load(file).and_then(proxy::routing::snapshot::Snapshot::build);
        match result {
            Ok(snapshot) => {
                println!("{}: ok", file.display());
                print!("{}", snapshot.config.summary());
                if snapshot.config.keys.is_none() {
                    println!(
                        "  (keys file {} will be created on first run)",
                        snapshot.config.keys_file.display()
                    );
                }
                if !snapshot.config.tls_cert.exists() {
                    println!("  (a development certificate will be made on first run)");
                }
                unresolved_names(&snapshot);
            }
            Err(errors) => {
                failed += 1;
                eprintln!("{}: {}", file.display(), proxy::config::format_errors(&errors));
            }
        }
    }
    if failed > 0 {
        Err(format!("{failed} of {} config file(s) are invalid", files.len()))
    } else {
        Ok(())
    }
}

/// Warns of remote endpoints whose names did not resolve when the pools were built: not an
/// error, since a name inside a cluster does not resolve on a laptop; `gateway run` looks it
/// up again.
fn unresolved_names(snapshot: &proxy::routing::snapshot::Snapshot) {
    for (pool, backend) in &snapshot.pools {
        let proxy::routing::snapshot::Backend::Remote(r) = backend else {
            continue;
        };
        for (i, endpoint, why) in r.unresolved() {
            println!(
                "  warning: pools.{pool}.{}.endpoints[{i}]: {endpoint} does not resolve here ({why}); \
                 `gateway run` looks it up again every {}: until it resolves, the pool has no endpoint from it \
                 (a stable pool with none fails /health/ready)",
                r.spec.kind(),
                humantime::format_duration(r.spec.dns_refresh)
            );
        }
    }
}

fn report(
    config: &Path,
    stores: Vec<PathBuf>,
    since: Option<&str>,
    route: Option<String>,
    format: ReportFormat,
    latest: usize,
) -> Result<(), String> {
    use proxy::shadow::{html, report};
    let stores = resolve_stores(config, stores)?;
    let query = report::Query {
        since: since.map(report::since).transpose()?,
        route,
        latest,
    };
    let r = report::read_many(&stores, &query)?;
    match format {
        ReportFormat::Table => print!("{}", report::table(&r)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&r).expect("reports serialize")),
        ReportFormat::Html => print!("{}", html::page(&r)),
    }
    Ok(())
}

/// The stores to read: those given (folders expanded), else the config's shadow.store.
fn resolve_stores(config: &Path, stores: Vec<PathBuf>) -> Result<Vec<PathBuf>, String> {
    if !stores.is_empty() {
        return expand_stores(stores);
    }
    // Only shadow.store is needed: read it without validating the rest, so that reports
    // can be read on a machine without the models, or while the config is being edited.
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e} (or pass --store)", config.display()))?;
    let value: yaml_serde::Value =
        yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let rel = value
        .get("shadow")
        .and_then(|s| s.get("store"))
        .and_then(|s| s.as_str())
        .unwrap_or(proxy::config::file::DEFAULT_SHADOW_STORE);
    Ok(vec![config.parent().unwrap_or(Path::new(".")).join(rel)])
}

/// Writes a consistent copy of one store (what a replica has seen) to `out`.
fn export_store(config: &Path, stores: Vec<PathBuf>, out: &Path) -> Result<(), String> {
    let stores = resolve_stores(config, stores)?;
    let [store] = stores.as_slice() else {
        return Err(format!("--export copies one store; {} given", stores.len()));
    };
    proxy::shadow::report::export(store, out)?;
    println!("{}: a consistent copy of {}", out.display(), store.display());
    Ok(())
}

/// Folders stand for the `*.sqlite3` files in them (copies of several replicas' stores).
fn expand_stores(given: Vec<PathBuf>) -> Result<Vec<PathBuf>, String> {
    let mut stores = Vec::new();
    for path in given {
        if !path.is_dir() {
            stores.push(path);
            continue;
        }
        let entries = std::fs::read_dir(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sqlite3"))
            .collect();
        if found.is_empty() {
            return Err(format!("no *.sqlite3 shadow stores in {}", path.display()));
        }
        found.sort();
        stores.extend(found);
    }
    Ok(stores)
}

/// The config as loose YAML: only auth.keys_file and the tier names are needed, read without
/// validating the rest, so keys can be managed even while another part is being fixed.
fn loose_config(config: &Path) -> yaml_serde::Value {
    let text = std::fs::read_to_string(config).unwrap_or_default();
    yaml_serde::from_str(&text).unwrap_or_default()
}

fn keys_file_of(
    config: &Path,
    value: &yaml_serde::Value,
    keys_file: Option<PathBuf>,
) -> Result<PathBuf, String> {
    if let Some(f) = keys_file {
        return Ok(f);
    }
    let rel = value
        .get("auth")
        .and_then(|a| a.get("keys_file"))
        .and_then(|f| f.as_str())
        .ok_or_else(|| format!("{} has no auth.keys_file; pass --keys-file", config.display()))?;
    Ok(config.parent().unwrap_or(Path::new(".")).join(rel))
}

fn set_disabled(args: &KeysFileArgs, id: &str, disabled: bool) -> Result<(), String> {
    let file = keys_file_of(&args.config, &loose_config(&args.config), args.keys_file.clone())?;
    proxy::config::keys::set_disabled(&file, id, disabled)?;
    let what = if disabled { "revoked (disabled)" } else { "enabled" };
    println!("key {id} {what} in {}", file.display());
    Ok(())
}

fn list_keys(args: &KeysFileArgs) -> Result<(), String> {
    let file = keys_file_of(&args.config, &loose_config(&args.config), args.keys_file.clone())?;
    if !file.exists() {
        eprintln!(
            "no keys file at {} yet: `gateway run` makes it (with a development key, unless \
             auth.create_dev_key is false) and `gateway keys add --tenant NAME` adds a key to it",
            file.display()
        );
        return Ok(());
    }
    let keys = proxy::config::keys::list(&file)?;
    // Ids are `key_` and 24 hex digits.
    println!("{:<28} {:<20} {:<12} state", "id", "tenant", "tier");
    for (id, tenant, tier, disabled) in keys {
        let state = if disabled { "revoked" } else { "active" };
        println!("{id:<28} {tenant:<20} {tier:<12} {state}");
    }
    Ok(())
}

fn add_key(config: &Path, keys_file: Option<PathBuf>, tenant: &str, tier: &str) -> Result<(), String> {
    let value = loose_config(config);
    let file = keys_file_of(config, &value, keys_file)?;
    let tiers: Vec<String> = value
        .get("rate_limits")
        .and_then(|r| r.get("tiers"))
        .and_then(|t| t.as_mapping())
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if tier != "default" && !tiers.iter().any(|t| t == tier) {
        return Err(format!(
            "tier {tier:?} is not defined under rate_limits.tiers in {} (defined: default{})",
            config.display(),
            tiers.iter().map(|t| format!(", {t}")).collect::<String>()
        ));
    }
    let (key, id) = proxy::config::keys::add_key(&file, tenant, tier)?;
    eprintln!(
        "added key {id} for tenant {tenant:?} (tier {tier}) to {}; it is shown this once:",
        file.display()
    );
    println!("{key}");
    Ok(())
}
