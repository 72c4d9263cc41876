//! `inference-server --models models/ --listen 127.0.0.1:8000`
//!
//! Serves every `<name>/<version>/model.onnx` under `--models` over the Open Inference
//! Protocol REST API, each version in its own batching pool.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use inference::protocol::{DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_BODY_BYTES};
use inference::server::{InferenceServer, ServerOptions};
use inference::{ModelRepository, PoolConfig};

// Requests allocate many small, short-lived buffers across threads (parsed tensors go to a
// worker thread and outputs come back): mimalloc's thread-local free lists handle that
// pattern markedly faster than glibc malloc (measured with loadtests/bench_inference.sh).
#[global_allocator]
static GLOBAL: inference::alloc::MiMalloc = inference::alloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "inference-server",
    version,
    about = "Serve an ONNX model repository over the Open Inference Protocol (KServe v2 REST; gRPC with --grpc-listen)",
    after_help = "The ONNX Runtime library is taken from ORT_DYLIB_PATH, else from .ort/lib/ \
                  (scripts/setup.sh fetches it).\nLog level: RUST_LOG (default: info)."
)]
struct Args {
    /// Model repository: <name>/<version>/model.onnx
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Address to listen on (HTTP/1.1 and HTTP/2 prior knowledge)
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService and
    /// grpc.health.v1.Health) on this address, e.g. 127.0.0.1:8001 (Triton's port)
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// Worker threads (each with its own ORT session) per model version
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Most rows per ORT run; 1 disables dynamic batching
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest a batch waits for more requests, in microseconds
    #[arg(long, default_value_t = 250)]
    max_delay_us: u64,
    /// When a batch waits for more requests: `adaptive` (only while another worker runs; a
    /// lone request runs at once) or `fixed` (always up to --max-delay-us)
    #[arg(long, default_value = "adaptive")]
    batching: inference::pool::Batching,
    /// A lone request of a few rows runs on the connection's thread, without waking a
    /// worker, when the model runs one in under this many microseconds (measured); 0: never
    #[arg(long, default_value_t = inference::pool::DEFAULT_INLINE_MAX.as_micros() as u64)]
    inline_max_us: u64,
    /// Queued requests per model version before new ones get 503
    #[arg(long, default_value_t = 1024)]
    queue_capacity: usize,
    /// ONNX Runtime intra-op threads per session
    #[arg(long, default_value_t = 1)]
    intra_threads: usize,
    /// Pass NaN and infinity in float inputs to the model instead of answering 400
    #[arg(long)]
    allow_non_finite: bool,
    /// Largest request body accepted, in bytes (larger: 413)
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes, at least 8192 (larger: 431)
    #[arg(long, default_value_t = 16384)]
    max_header_bytes: usize,
    /// A request's head must arrive within this many ms of the connection opening or of the
    /// previous answer (also how long an idle HTTP/1.1 connection is kept)
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// A request's body must arrive within this many ms (408 otherwise)
    #[arg(long, default_value_t = 30_000)]
    body_timeout_ms: u64,
    /// A connection that moves no byte for this many seconds is closed
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// Open connections at most; more are closed when accepted
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Most rows per request (larger: 413)
    #[arg(long, default_value_t = inference::pool::DEFAULT_MAX_ROWS)]
    max_rows: usize,
    /// Largest answer, in bytes (larger: 413, refused before it is encoded)
    #[arg(long, default_value_t = DEFAULT_MAX_ANSWER_BYTES)]
    max_answer_bytes: usize,
    /// Threads for network I/O (default: one per core)
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or a collector gets plain text, as the
        // gateway's does.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("inference-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = PoolConfig {
        instances: args.instances,
        max_batch: args.max_batch,
        max_delay: Duration::from_micros(args.max_delay_us),
        queue_capacity: args.queue_capacity,
        intra_threads: args.intra_threads,
        reject_non_finite: !args.allow_non_finite,
        idle_priority: false,
        max_rows: args.max_rows,
        batching: args.batching,
        inline_max: Duration::from_micros(args.inline_max_us),
    };
    config.validate()?;
    for (flag, value) in [
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-connections", args.max_connections),
        ("--max-answer-bytes", args.max_answer_bytes),
        ("--header-timeout-ms", args.header_timeout_ms as usize),
        ("--body-timeout-ms", args.body_timeout_ms as usize),
        ("--idle-timeout-s", args.idle_timeout_s as usize),
    ] {
        if value == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    inference::runtime::environment()?;

    let repo = ModelRepository::load(&args.models, &config).map_err(|errors| match errors.as_slice() {
        // The folder itself (missing, unreadable, empty): no model was tried.
        [e] if e.model == "*" => format!("--models {}: {}", args.models.display(), e.reason),
        _ => {
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            format!("{} model(s) failed to load:\n{}", errors.len(), lines.join("\n"))
        }
    })?;
    for (name, version, pool) in repo.iter() {
        let meta = pool.metadata();
        let inputs: Vec<String> = meta.inputs.iter().map(ToString::to_string).collect();
        tracing::info!(
            "loaded {name}/{version}: inputs [{}], batching {}",
            inputs.join("; "),
            if meta.batchable && config.max_batch > 1 {
                "on"
            } else {
                "off"
            }
        );
    }

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One I/O thread: a current-thread runtime skips work-stealing bookkeeping entirely.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the async runtime: {e}"))?;

    let server = InferenceServer::new(
        Arc::new(repo),
        ServerOptions {
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes,
            header_timeout: Duration::from_millis(args.header_timeout_ms),
            body_timeout: Duration::from_millis(args.body_timeout_ms),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            max_connections: args.max_connections,
            max_answer_bytes: args.max_answer_bytes,
        },
    );
    runtime.block_on(async {
        let listener = inference::server::bind(args.listen).await?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(
            "serving {} on http://{addr} (Open Inference Protocol v2)",
            args.models.display()
        );
        let Some(grpc_addr) = args.grpc_listen else {
            server.clone().serve(listener, shutdown_signal()).await;
            return Ok::<(), String>(());
        };
        let grpc_listener = inference::server::bind(grpc_addr).await?;
        let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("serving the same over gRPC on {grpc_addr} (inference.GRPCInferenceService)");
        // One signal stops both servers.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let grpc = inference::grpc::GrpcServer::new(server.repository().clone(), server.options().clone());
        let rest = server.clone().serve(listener, wait(stopped.clone()));
        let grpc = grpc.serve(grpc_listener, wait(stopped));
        let signal = async {
            shutdown_signal().await;
            let _ = stop.send(true);
        };
        let ((), (), grpc) = tokio::join!(rest, signal, grpc);
        grpc
    })?;
    for (name, version, pool) in server.repository().iter() {
        let s = pool.stats();
        if s.requests + s.rejected > 0 {
            tracing::info!(
                "{name}/{version}: {} requests, {} rows in {} ORT runs ({:.1} rows/run), {} refused (queue full), {} failed",
                s.requests,
                s.rows,
                s.batches,
                s.rows as f64 / s.batches.max(1) as f64,
                s.rejected,
                s.failed
            );
        }
    }
    // Dropping the repository drains every pool's queue before the process exits.
    drop(server);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
