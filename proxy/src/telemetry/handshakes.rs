//! Failed TLS handshakes of the client listener: counted, and logged as a summary rather than
//! a line each. At the edge, scanners, plain-HTTP clients on the TLS port and hostile clients
//! fail handshakes as fast as they can connect; pingora logs each at ERROR (and rustls warns
//! about each client that names an IP address in SNI, as `wrk` and OpenSSL's clients do), so
//! any client could write the gateway's log at its own rate and bury what operators look for.
//! nginx logs client handshake failures at `info` for the same reason; Envoy only counts them.
//!
//! So the binary's log layer drops those per-connection events ([`PerConnectionNoise`]), the
//! [`HandshakeFailures`] layer counts them and keeps the last reason, and the upkeep loop writes
//! one WARN line at most every [`SUMMARY_EVERY`] ([`summary_due`]): the first failure within
//! 100 ms, later ones summed, the rest at shutdown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter, Layer};

/// At most one summary line this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// pingora's target for its listener's events, among them "Downstream handshake error/timeout".
const LISTENING: &str = "pingora_core::services::listening";
/// rustls's parser of handshake messages: its warnings are about what a client sent.
const RUSTLS_PARSE: &str = "rustls::msgs::handshake";

/// Client connections whose TLS handshake failed or timed out, since the process started. One
/// process has one client listener, so the count is process-wide.
pub static TLS_HANDSHAKE_FAILURES: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
    IntCounter::new(
        "tls_handshake_failures_total",
        "Client connections whose TLS handshake failed or timed out",
    )
    .expect("valid metric")
});

/// Failures not yet in a summary line, the last one's text, and when the last line was written.
struct Tally {
    unreported: u64,
    last: String,
    reported_at: Option<Instant>,
}

static TALLY: Mutex<Tally> = Mutex::new(Tally {
    unreported: 0,
    last: String::new(),
    reported_at: None,
});

/// The text of an event's `message` field.
fn message(event: &Event<'_>) -> String {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    let mut m = Message(String::new());
    event.record(&mut m);
    m.0
}

/// The event's target and level, read once. pingora and rustls log through `log`, whose
/// events reach tracing with the target "log" and their own in fields (the filters see the
/// same).
fn origin<R>(event: &Event<'_>, f: impl FnOnce(&str, Level) -> R) -> R {
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or(event.metadata());
    f(meta.target(), *meta.level())
}

/// A pingora listener event about a handshake: the text is formatted only for that target.
fn handshake_failure(target: &str, event: &Event<'_>) -> Option<String> {
    (target == LISTENING)
        .then(|| message(event))
        .filter(|text| text.contains("handshake"))
}

/// Counts pingora's "Downstream handshake error/timeout" events into
/// [`TLS_HANDSHAKE_FAILURES`] and keeps the last one's text for the summary. Install it with a
/// filter on pingora's listening target (ERROR), whatever `RUST_LOG` says.
pub struct HandshakeFailures;

impl<S: tracing::Subscriber> Layer<S> for HandshakeFailures {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(text) = origin(event, |target, _| handshake_failure(target, event)) else {
            return;
        };
        TLS_HANDSHAKE_FAILURES.inc();
        let mut tally = TALLY.lock().unwrap_or_else(|e| e.into_inner());
        tally.unreported += 1;
        tally.last = text;
    }
}

/// The filter of the binary's log layer that drops the events one client's connection causes
/// (the handshake failures [`HandshakeFailures`] counts; rustls's warnings about what a client
/// sent), whatever `RUST_LOG` says; everything else passes to the other filters.
pub struct PerConnectionNoise;

impl<S> Filter<S> for PerConnectionNoise {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    /// Only events of `log`'s callsites (where pingora's and rustls's land) and of the two
    /// targets are looked at one by one; every other callsite keeps the other filter's cached
    /// answer.
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match meta.target() {
            "log" | LISTENING | RUSTLS_PARSE => Interest::sometimes(),
            _ => Interest::always(),
        }
    }

    /// This filter lets every level through, so the other one's hint stands. Without a hint
    /// the combination has none, and the process's maximum level becomes TRACE: then every
    /// `log::debug!` and `trace!` in pingora and rustls builds its record and asks the
    /// subscriber (`tracing_subscriber`'s `init` sets `log`'s maximum level from the hint).
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        origin(event, |target, level| match target {
            RUSTLS_PARSE => level > Level::WARN,
            _ => handshake_failure(target, event).is_none(),
        })
    }
}

/// The summary line when one is due at `now`: failures since the last line and the last one's
/// text, at most once every [`SUMMARY_EVERY`] (`flush`: whatever the time, for shutdown).
pub fn summary_due(now: Instant, flush: bool) -> Option<String> {
    let mut tally = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let due = tally
        .reported_at
        .is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY);
    if tally.unreported == 0 || !(due || flush) {
        return None;
    }
    let line = format!(
        "{} client TLS handshake{} failed{}; the last: {} (each is counted in \
         gateway_tls_handshake_failures_total; this line comes at most every {} s)",
        tally.unreported,
        if tally.unreported == 1 { "" } else { "s" },
        match tally.reported_at {
            Some(at) => format!(" in the last {} s", now.duration_since(at).as_secs().max(1)),
            None => " since the start".to_string(),
        },
        tally.last,
        SUMMARY_EVERY.as_secs()
    );
    tally.unreported = 0;
    tally.reported_at = Some(now);
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_keeps_the_log_levels_maximum() {
        use tracing_subscriber::filter::{EnvFilter, FilterExt};
        let combined = EnvFilter::new("info,pingora=warn").and(PerConnectionNoise);
        let hint = <_ as Filter<tracing_subscriber::Registry>>::max_level_hint(&combined);
        assert_eq!(hint, Some(LevelFilter::INFO));
    }

    #[test]
    fn a_summary_comes_at_once_then_at_most_every_interval_and_at_shutdown() {
        // The tally is process-wide: this is the only test that touches it.
        let t0 = Instant::now();
        assert_eq!(summary_due(t0, false), None, "nothing failed");
        let bump = |text: &str| {
            let mut tally = TALLY.lock().unwrap();
            tally.unreported += 1;
            tally.last = text.to_string();
        };
        bump("Downstream handshake error from 10.0.0.1:1: first");
        let first = summary_due(t0, false).expect("the first failure is reported at once");
        assert!(
            first.starts_with("1 client TLS handshake failed since the start; the last: "),
            "{first}"
        );
        assert!(first.ends_with("10.0.0.1:1: first (each is counted in gateway_tls_handshake_failures_total; this line comes at most every 10 s)"), "{first}");
        for i in 0..1000 {
            bump(&format!("Downstream handshake error from 10.0.0.2:{i}: flood"));
        }
        assert_eq!(
            summary_due(t0 + Duration::from_secs(9), false),
            None,
            "not before 10 s"
        );
        let later = summary_due(t0 + SUMMARY_EVERY, false).expect("due after 10 s");
        assert!(later.starts_with("1000 client TLS handshakes failed in the last 10 s; the last: Downstream handshake error from 10.0.0.2:999: flood"), "{later}");
        bump("Downstream handshake timeout");
        let t1 = t0 + SUMMARY_EVERY + Duration::from_secs(1);
        assert_eq!(summary_due(t1, false), None);
        let flushed = summary_due(t1, true).expect("shutdown writes what is left");
        assert!(
            flushed.starts_with("1 client TLS handshake failed in the last 1 s"),
            "{flushed}"
        );
        assert_eq!(summary_due(t1 + SUMMARY_EVERY, true), None, "nothing left");
    }
}
