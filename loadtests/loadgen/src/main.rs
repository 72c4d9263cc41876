//! `loadgen`: a fixed request rate over kept-alive HTTP/1.1 connections (TLS or not), with
//! every latency measured from when the request *should* have been sent. A closed-loop tool
//! such as wrk slows down with the server and under-reports tail latency ("coordinated
//! omission"); comparing p99 "at a fixed rate" needs an open loop like this one (or wrk2,
//! which Debian does not package). Requests leave evenly spaced, each when it is due (see
//! [`pace`]), over the connections in turn.
//!
//!     loadgen --url https://127.0.0.1:8443/v2/models/m/infer --rate 5000 --connections 32 \
//!             --duration 10 --body example.json --header "x-api-key: …" --cacert certs/ca.crt
//!
//! `--grpc` sends the same request as a gRPC `ModelInfer` call instead (HTTP/2, h2c or TLS with
//! ALPN h2; a call's frames in one write, see [`Sender`]): the JSON body is converted once,
//! before the load, into the protobuf message with raw tensor contents (what
//! `tritonclient.grpc` sends), and a call counts as answered only when its `grpc-status` is 0.
//!
//! `--bodies FILE --zipf S` draws each request's body from the file's lines, Zipf-distributed
//! (the first line the most frequent), and `hits` counts the answers the gateway served from
//! its prediction cache (`x-cache: hit`).
//!
//! Prints one machine-readable line:
//!     RESULT sent=… ok=… errors=… hits=… rate=… answered_per_s=… p50_us=… p90_us=… p99_us=… p999_us=… max_us=…
//!
//! `rate` is what was answered per second of the schedule; `answered_per_s` per second of
//! the time the answers took (the server's throughput when it was offered more). The
//! percentiles are over every request sent: a failed one (a non-2xx status, a failed gRPC
//! call, a socket error) counts as 60 s, slower than any answer, so a server that fails fast
//! cannot look fast (1% failed puts p99 at 60 s).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;

#[derive(Parser, Debug, Clone)]
#[command(about = "Open-loop HTTP(S) load at a fixed rate; latency from the intended send time")]
struct Args {
    /// http:// or https:// URL
    #[arg(long)]
    url: String,
    /// Requests per second, over all connections
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of measured load (after the warm-up)
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// POST this file's contents (GET without it)
    #[arg(long)]
    body: Option<PathBuf>,
    /// "name: value", repeatable
    #[arg(long)]
    header: Vec<String>,
    /// CA to trust for https (PEM)
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Call `inference.GRPCInferenceService/ModelInfer` on this model with the --body
    /// request (Open Inference Protocol JSON) converted to protobuf; the URL's path is ignored
    #[arg(long, value_name = "MODEL")]
    grpc: Option<String>,
    /// HTTP/2 instead of HTTP/1.1 (always so with --grpc)
    #[arg(long)]
    http2: bool,
    /// POST one of this file's lines (one body each) per request instead of --body, the
    /// line drawn from a Zipf distribution over the lines (rank 1 the most frequent)
    #[arg(long, conflicts_with = "body")]
    bodies: Option<PathBuf>,
    /// The Zipf exponent for --bodies (0: every line equally often)
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
}

struct Target {
    tls: Option<Arc<rustls::ClientConfig>>,
    grpc: bool,
    h2: bool,
    host: String,
    port: u16,
    path: String,
    /// One body (--body), or the lines of --bodies; none for GET.
    bodies: Vec<Bytes>,
    /// Cumulative probabilities of the bodies (Zipf), to draw one per request.
    cdf: Vec<f64>,
    headers: Vec<(String, String)>,
}

/// The cumulative distribution of Zipf(`n`, `s`): rank k (from 1) has weight 1 / k^s.
/// An exact inverse-CDF draw over a table: simpler than a sampler crate and the same
/// sequence on every run (each connection seeds its own generator).
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// splitmix64: a tiny seeded generator (the draws need no more).
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// HTTP/1.1 through hyper; HTTP/2 (gRPC, `--http2`) through the h2 crate directly, so that a
/// call's HEADERS and DATA frames leave in one write. hyper's HTTP/2 client (and tonic, built
/// on it) flushes the HEADERS before its body task has queued the DATA: two writes per call,
/// each waking the server. `tritonclient.grpc` (grpcio, gRPC's C core, as `perf_analyzer`)
/// sends a unary call in one: under `strace`, 200 calls made 205 `sendmsg`, one 315-byte TLS
/// record each. The server's CPU per request is measured against what such clients send.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(h2::client::SendRequest<Bytes>),
}

async fn handshake<T>(io: T, h2: bool) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (s, conn) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Sender::H2(s))
    } else {
        let io = hyper_util::rt::TokioIo::new(io);
        let (s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Sender::H1(s))
    }
}

async fn connect(t: &Target) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    if let Some(tls) = &t.tls {
        let name = ServerName::try_from(t.host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        handshake(stream, t.h2).await
    } else {
        handshake(tcp, t.h2).await
    }
}

/// One request: its status (599 for a failed gRPC call) and whether the answer came from the
/// gateway's prediction cache (`x-cache: hit`).
async fn one(sender: &mut Sender, t: &Target, body: Option<&Bytes>) -> Result<(u16, bool), String> {
    let mut b = http::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(t.path.as_str());
    b = match sender {
        Sender::H1(_) => b.header("host", format!("{}:{}", t.host, t.port)),
        Sender::H2(_) => b.uri(format!(
            "{}://{}:{}{}",
            if t.tls.is_some() { "https" } else { "http" },
            t.host,
            t.port,
            t.path
        )),
    };
    if t.grpc {
        b = b
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    for (k, v) in &t.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let (status, hit, in_head, trailers) = match sender {
        Sender::H1(s) => {
            let req = b
                .body(Full::new(body.cloned().unwrap_or_default()))
                .map_err(|e| e.to_string())?;
            s.ready().await.map_err(|e| e.to_string())?;
            let res = s.send_request(req).await.map_err(|e| e.to_string())?;
            let (status, hit, in_head) = head_of(&res);
            let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
            (status, hit, in_head, body.trailers().cloned())
        }
        Sender::H2(s) => {
            if let (Some(body), false) = (body, t.grpc) {
                // What hyper (and curl) send with a REST body; gRPC clients send none.
                b = b.header("content-length", body.len());
            }
            let req = b.body(()).map_err(|e| e.to_string())?;
            std::future::poll_fn(|cx| s.poll_ready(cx))
                .await
                .map_err(|e| e.to_string())?;
            // Both frames are queued before the connection task next writes: one write.
            let (res, mut stream) = s.send_request(req, body.is_none()).map_err(|e| e.to_string())?;
            if let Some(b) = body {
                stream.send_data(b.clone(), true).map_err(|e| e.to_string())?;
            }
            let res = res.await.map_err(|e| e.to_string())?;
            let (status, hit, in_head) = head_of(&res);
            let mut recv = res.into_body();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = recv.flow_control().release_capacity(chunk.len());
            }
            let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
            (status, hit, in_head, trailers)
        }
    };
    if t.grpc {
        // A call succeeded only with grpc-status 0, in the trailers (or a trailers-only answer).
        let code = trailers.as_ref().and_then(grpc_status).or(in_head);
        if code.as_deref() != Some(b"0") {
            return Ok((if status == 200 { 599 } else { status }, false));
        }
    }
    Ok((status, hit))
}

fn grpc_status(h: &http::HeaderMap) -> Option<Vec<u8>> {
    h.get("grpc-status").map(|v| v.as_bytes().to_vec())
}

/// An answer's status, whether the gateway's cache served it, and a `grpc-status` in its head.
fn head_of<B>(res: &http::Response<B>) -> (u16, bool, Option<Vec<u8>>) {
    let hit = res.headers().get("x-cache").is_some_and(|v| v == "hit");
    (res.status().as_u16(), hit, grpc_status(res.headers()))
}

/// The --body request (Open Inference Protocol JSON) as one framed `ModelInferRequest`.
fn grpc_body(json: &[u8], model: &str) -> Result<Bytes, String> {
    use prost::Message;
    let request = inference::protocol::decode_request(json, None).map_err(|e| format!("--body: {e}"))?;
    let message = inference::protocol::grpc::encode_request(model, "", "", &request.inputs);
    let mut out = Vec::with_capacity(5 + message.encoded_len());
    out.push(0);
    out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut out).map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// Where a failed request lands in the latency histogram: its top (60 s).
const FAILED_US: u64 = 60_000_000;

struct Tally {
    hist: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: u64,
    /// Answers served from the gateway's prediction cache.
    hits: u64,
    /// When the last measured request was answered.
    last: Option<Instant>,
}

/// One connection: sends each request the pacer hands it, in order, and measures it from
/// the moment it was due. While an answer is slow, the requests due meanwhile wait in the
/// channel and their wait counts (no coordinated omission).
async fn connection(
    t: Arc<Target>,
    mut due_times: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    measure_from: Instant,
    seed: u64,
) -> Tally {
    let mut tally = Tally {
        hist: Histogram::new_with_bounds(1, FAILED_US, 3).expect("bounds"),
        sent: 0,
        ok: 0,
        errors: 0,
        hits: 0,
        last: None,
    };
    let mut rng = seed;
    let mut sender: Option<Sender> = None;
    while let Some(due) = due_times.recv().await {
        if sender.is_none() {
            sender = connect(&t).await.ok();
        }
        let body = match t.bodies.len() {
            0 => None,
            1 => Some(&t.bodies[0]),
            n => {
                let u = next_unit(&mut rng);
                Some(&t.bodies[t.cdf.partition_point(|&c| c < u).min(n - 1)])
            }
        };
        let result = match sender.as_mut() {
            Some(s) => one(s, &t, body).await,
            None => Err("connect failed".into()),
        };
        if due < measure_from {
            if result.is_err() {
                sender = None;
            }
            continue;
        }
        tally.sent += 1;
        tally.last = Some(Instant::now());
        // From when the request was due: time spent waiting behind a slow answer counts.
        let latency = due.elapsed().as_micros().max(1) as u64;
        match result {
            Ok((status, hit)) if (200..300).contains(&status) => {
                tally.ok += 1;
                tally.hits += u64::from(hit);
                let _ = tally.hist.record(latency.min(FAILED_US));
            }
            // A failed request counts as slower than any answer (the histogram's top), so
            // that failures can only raise the percentiles, never flatter them.
            Ok(_) => {
                tally.errors += 1;
                let _ = tally.hist.record(FAILED_US);
            }
            Err(_) => {
                tally.errors += 1;
                let _ = tally.hist.record(FAILED_US);
                sender = None;
            }
        }
    }
    tally
}

/// Hands out the schedule: request `n` is due at `start + n / rate` and goes to connection
/// `n % connections`, released when it is due.
///
/// The wait is a timerfd polled by the runtime, not tokio's timer: that one rounds every
/// deadline up to the next millisecond and fires a millisecond's worth of requests at once,
/// which put about 1.5 ms of the generator's own lag into every latency measured (a p50 of
/// 2.2 ms at 1,000 requests/s against any server here) and sent the load as bursts. A timerfd
/// wakes this thread within microseconds of the due time; a pacer thread in `nanosleep` did
/// as well, but cost two more thread wake-ups per request on the client core.
///
/// Requests sent one by one cost the client more than bursts did: at 8,862 requests/s
/// against the gateway, 1.5× the CPU (one wake-up per request instead of one per
/// millisecond). `bench_gateway.sh` picks its fixed rate with that in mind.
///
/// Waits up to [`SPIN`] (rates above 20,000/s) are not given to the timer: the pacer yields
/// until the request is due, so the runtime keeps polling the sockets without sleeping. At
/// 38,500 requests/s against the gateway (bench_shadow.sh's half load; a one-off of
/// 2026-12-05, `perf sched` over 4.5 s) the timer-paced generator ran 4,454 ms of 4,500 on its
/// core, 15% of it in `timerfd_settime`: saturated, it released requests late and in bunches,
/// and its own lag was most of every latency measured (p50 150 µs; 38 µs with the requests
/// released on time, the same gateway in the same hour). Spinning costs the server nothing;
/// a process that shares the client's core (an upstream server in some benchmarks) gets it
/// whenever it is runnable.
const SPIN: Duration = Duration::from_micros(50);

async fn pace(
    queues: Vec<tokio::sync::mpsc::UnboundedSender<Instant>>,
    start: Instant,
    interval: Duration,
    end: Instant,
) -> std::io::Result<()> {
    use timerfd::{ClockId, SetTimeFlags, TimerFd, TimerState};
    let fd = TimerFd::new_custom(ClockId::Monotonic, true, true)?;
    // SAFETY: the TimerFd owns its descriptor and is moved into the AsyncFd, which keeps it
    // open, unchanged, until both are dropped together.
    let mut timer = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
    let mut n: u32 = 0;
    loop {
        let due = start + interval * n;
        if due >= end {
            return Ok(());
        }
        let wait = due.saturating_duration_since(Instant::now());
        if wait <= SPIN {
            // Yields until it is due (not at all when it is): see SPIN.
            while Instant::now() < due {
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
        } else {
            timer
                .get_mut()
                .set_state(TimerState::Oneshot(wait), SetTimeFlags::Default);
            loop {
                let mut ready = timer.readable().await?;
                if ready.get_inner().read() > 0 {
                    break;
                }
                ready.clear_ready();
            }
        }
        // Every request due by now leaves (after a late wake-up, several at once).
        let now = Instant::now();
        while start + interval * n <= now && start + interval * n < end {
            // A receiver is gone only once its task has ended; the others keep their schedule.
            let _ = queues[n as usize % queues.len()].send(start + interval * n);
            n += 1;
        }
    }
}

fn tls_config(cacert: Option<&PathBuf>, h2: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let path = cacert.ok_or("https needs --cacert")?;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(Arc::new(config))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let uri: hyper::Uri = args.url.parse().map_err(|e| format!("--url: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let jsons: Vec<Bytes> = match (&args.body, &args.bodies) {
        (Some(p), _) => vec![Bytes::from(read(p)?)],
        (None, Some(p)) => read(p)?
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(Bytes::copy_from_slice)
            .collect(),
        (None, None) => Vec::new(),
    };
    if args.bodies.is_some() && jsons.is_empty() {
        return Err("--bodies: no lines".into());
    }
    let (bodies, path) = match &args.grpc {
        Some(model) if jsons.is_empty() => return Err(format!("--grpc {model} needs --body or --bodies")),
        Some(model) => (
            jsons
                .iter()
                .map(|j| grpc_body(j, model))
                .collect::<Result<Vec<_>, _>>()?,
            "/inference.GRPCInferenceService/ModelInfer".to_string(),
        ),
        None => (
            jsons,
            uri.path_and_query().map_or("/".to_string(), |p| p.to_string()),
        ),
    };
    let cdf = zipf_cdf(bodies.len(), args.zipf);
    let target = Arc::new(Target {
        tls: if https {
            Some(tls_config(
                args.cacert.as_ref(),
                args.grpc.is_some() || args.http2,
            )?)
        } else {
            None
        },
        grpc: args.grpc.is_some(),
        h2: args.grpc.is_some() || args.http2,
        host: uri.host().ok_or("--url needs a host")?.to_string(),
        port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        path,
        bodies,
        cdf,
        headers: args
            .header
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or(format!("--header {h:?} is not \"name: value\""))
            })
            .collect::<Result<_, _>>()?,
    });
    if args.rate <= 0.0 || args.connections == 0 {
        return Err("--rate and --connections must be positive".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let (queues, receivers): (Vec<_>, Vec<_>) = (0..args.connections)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let tallies = runtime.block_on(async {
        let pacer = tokio::spawn(pace(queues, start, interval, end));
        let tasks: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, due_times)| tokio::spawn(connection(target.clone(), due_times, measure_from, i as u64)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("connection task"));
        }
        pacer
            .await
            .map_err(|e| format!("pacer: {e}"))?
            .map_err(|e| format!("timerfd: {e}"))?;
        Ok::<_, String>(out)
    })?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, FAILED_US, 3).expect("bounds");
    let (mut sent, mut ok, mut errors, mut hits) = (0, 0, 0, 0);
    let mut last = measure_from;
    for t in tallies {
        hist.add(&t.hist).expect("same bounds");
        sent += t.sent;
        ok += t.ok;
        errors += t.errors;
        hits += t.hits;
        last = last.max(t.last.unwrap_or(measure_from));
    }
    // Offered more than it answers, a server is still working through the backlog when the
    // schedule ends: its throughput is what it answered over the time it took.
    let span = (last - measure_from).as_secs_f64().max(args.duration);
    println!(
        "RESULT sent={sent} ok={ok} errors={errors} hits={hits} rate={:.0} answered_per_s={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        ok as f64 / args.duration,
        ok as f64 / span,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}
