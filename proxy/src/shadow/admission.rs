//! Admission by spare CPU: a copy is made only while the process has CPU to spare for it.
//!
//! Shadows run at idle priority, so they cannot take the CPU from the client path; but a
//! copy admitted when there is no CPU to spare waits, holds memory, and is dropped later
//! (at the in-flight cap, or timed out) after costing the client path its hand-over. So copies
//! are admitted against a budget instead, whatever the in-flight cap:
//!
//! - every [`WINDOW`] the shadow runtime measures the process's CPU time and the part of it
//!   that was shadow work (its own thread, and idle-priority pool workers:
//!   [`inference::priority::background_cpu`]); the rest is the foreground's;
//! - the copies' budget for the next window is what the process may use
//!   (`shadow.max_cpu_percent` of the cores it may run on) minus the foreground's use,
//!   divided by the CPU one compared copy costs (measured the same way, smoothed), plus
//!   what the last window left unused, up to as much again;
//! - a copy over the budget is dropped and counted as `no_spare_cpu`, unless an I/O thread
//!   runs it and keeps up with its copies ([`super::local::drainer_keeps_up`], with no cap
//!   below 100%): that thread's quiet turns are spare CPU seen directly, where the budget is
//!   an estimate a window late (it shed whole bursts of copies the core had room for:
//!   docs/shadows.md). A budget older than two windows admits nothing: the shadow runtime
//!   that refills it runs at idle priority, and when it cannot get the CPU for that long,
//!   the process has none to spare.
//!
//! Copies to pools that also serve clients are charged as foreground work: conservative.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the budget is measured and refilled.
pub const WINDOW: Duration = Duration::from_millis(50);

/// What one copy is assumed to cost before any was measured: a pessimistic figure (a local
/// copy of the random forest measured 15 µs in `loadtests/bench_shadow.sh --short`).
const FIRST_GUESS: Duration = Duration::from_micros(50);

pub struct CpuBudget {
    /// Copies that may still be admitted in this window.
    tokens: AtomicI64,
    /// When the budget was last refilled (ms since `start`).
    refilled_ms: AtomicU64,
    start: Instant,
    /// `shadow.max_cpu_percent` of the snapshot in force.
    max_cpu_percent: AtomicU32,
    /// Copies whose shadow answered (or failed) so far.
    done: AtomicU64,
    /// Cores the process may use.
    cores: f64,
    sampler: Mutex<Sampler>,
}

struct Sampler {
    at: Instant,
    process: Duration,
    shadow: Duration,
    done: u64,
    /// CPU per copy, smoothed.
    per_copy: Duration,
}

/// One window's measurement, for the metrics.
pub struct Sample {
    /// Share of one core the foreground used.
    pub foreground: f64,
    pub per_copy: Duration,
    pub tokens: i64,
    /// CPU spent on shadow work in the window.
    pub shadow: Duration,
}

impl CpuBudget {
    /// `cores`: the cores the process may use (`std::thread::available_parallelism`).
    pub fn new(cores: usize) -> CpuBudget {
        // Until the first measurement: a window of an idle process at the first guess.
        let first = (cores.max(1) as f64 * WINDOW.as_secs_f64() / FIRST_GUESS.as_secs_f64()) as i64;
        CpuBudget {
            tokens: AtomicI64::new(first),
            refilled_ms: AtomicU64::new(0),
            start: Instant::now(),
            max_cpu_percent: AtomicU32::new(100),
            done: AtomicU64::new(0),
            cores: cores.max(1) as f64,
            sampler: Mutex::new(Sampler {
                at: Instant::now(),
                process: inference::priority::process_cpu(),
                shadow: Duration::ZERO,
                done: 0,
                per_copy: FIRST_GUESS,
            }),
        }
    }

    /// Takes one copy's share; false when the budget is spent or stale.
    pub fn admit(&self, max_cpu_percent: u32) -> bool {
        self.admit_at(Instant::now(), max_cpu_percent)
    }

    fn admit_at(&self, now: Instant, max_cpu_percent: u32) -> bool {
        if self.max_cpu_percent.load(Ordering::Relaxed) != max_cpu_percent {
            self.max_cpu_percent.store(max_cpu_percent, Ordering::Relaxed);
        }
        let now_ms = now.saturating_duration_since(self.start).as_millis() as u64;
        let stale = now_ms > self.refilled_ms.load(Ordering::Acquire) + 2 * WINDOW.as_millis() as u64;
        !stale && self.tokens.fetch_sub(1, Ordering::AcqRel) > 0
    }

    /// A copy's shadow answered or failed.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Measures the window that just ended and sets the next one's budget. `shadow_thread`:
    /// the CPU time of the thread that runs shadow tasks (the caller's).
    pub fn refill(&self, shadow_thread: Duration) -> Sample {
        self.refill_from(
            Instant::now(),
            inference::priority::process_cpu(),
            shadow_thread + inference::priority::background_cpu(),
        )
    }

    /// [`Self::refill`] from given readings: the time, the process's CPU time and the shadow
    /// work's, both since the process started.
    fn refill_from(&self, now: Instant, process: Duration, shadow: Duration) -> Sample {
        let done = self.done.load(Ordering::Relaxed);
        let mut s = self.sampler.lock();
        let wall = now.saturating_duration_since(s.at).as_secs_f64().max(1e-3);
        let shadow_spent = shadow.saturating_sub(s.shadow);
        let foreground = process.saturating_sub(s.process).saturating_sub(shadow_spent);
        let copies = done.saturating_sub(s.done);
        if copies > 0 {
            let measured = shadow_spent / copies.min(u32::MAX as u64) as u32;
            // The first measurement replaces the guess. Smoothed from the guess, the estimate
            // read 38.6, 7.3 and 3.7 µs half a second, one and one and a half seconds into a
            // 39,800/s run of a freshly started mirrored gateway, which shed 33,935 copies in
            // its first 2 s and none in the 2.5 s after (a one-off, 2026-12-05). Later ones
            // are smoothed over a few windows: one window's count is small at low rates.
            s.per_copy = if s.done == 0 {
                measured
            } else {
                (s.per_copy * 3 + measured) / 4
            };
        }
        let allowed = self.cores * f64::from(self.max_cpu_percent.load(Ordering::Relaxed)) / 100.0;
        let spare = (allowed - foreground.as_secs_f64() / wall).max(0.0);
        let per_copy = s.per_copy.max(Duration::from_micros(1)).as_secs_f64();
        // (The epsilon keeps a whole number of copies whole through the float arithmetic.)
        let fresh = (spare * WINDOW.as_secs_f64() / per_copy + 1e-6) as i64;
        // What the last window left unused carries over, up to one window's worth: copies
        // wait at idle priority, so a busy window's copies can use the spare CPU of the
        // quiet one before it (the foreground's use swings from window to window).
        let tokens = fresh + self.tokens.load(Ordering::Acquire).clamp(0, fresh);
        let per_copy = s.per_copy;
        *s = Sampler {
            at: now,
            process,
            shadow,
            done,
            per_copy,
        };
        self.tokens.store(tokens, Ordering::Release);
        let at_ms = now.saturating_duration_since(self.start).as_millis() as u64;
        self.refilled_ms.store(at_ms, Ordering::Release);
        Sample {
            foreground: foreground.as_secs_f64() / wall,
            per_copy,
            tokens,
            shadow: shadow_spent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const US: fn(u64) -> Duration = Duration::from_micros;

    /// A budget for one core, at most 90% of it, whose sampler starts at `t0` with no CPU used,
    /// and nothing left to carry over.
    fn budget() -> (CpuBudget, Instant) {
        let b = CpuBudget::new(1);
        b.tokens.store(0, Ordering::Relaxed);
        b.max_cpu_percent.store(90, Ordering::Relaxed);
        let t0 = b.start;
        *b.sampler.lock() = Sampler {
            at: t0,
            process: Duration::ZERO,
            shadow: Duration::ZERO,
            done: 0,
            per_copy: FIRST_GUESS,
        };
        (b, t0)
    }

    #[test]
    fn an_idle_process_gets_a_budget_a_busy_one_none() {
        let (b, t0) = budget();
        // 5 ms of 50 used: 0.9 - 0.1 = 0.8 of a core spare, 40 ms per window, 800 copies
        // at the first guess of 50 µs each.
        let s = b.refill_from(t0 + MS(50), MS(5), Duration::ZERO);
        assert!((s.foreground - 0.1).abs() < 1e-9);
        assert_eq!(s.tokens, 800);
        assert!(b.admit_at(t0 + MS(60), 90));
        // The next window the foreground used 48 ms of 50: over 90%, nothing admitted.
        let s = b.refill_from(t0 + MS(100), MS(53), Duration::ZERO);
        assert_eq!(s.tokens, 0);
        assert!(!b.admit_at(t0 + MS(110), 90));
    }

    #[test]
    fn the_budget_runs_out_within_a_window() {
        let (b, t0) = budget();
        b.refill_from(t0 + MS(50), MS(45) - US(50) * 3, Duration::ZERO); // 0.9 - 0.897 spare
        let admitted = (0..10).filter(|_| b.admit_at(t0 + MS(60), 90)).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn what_a_window_leaves_carries_over_up_to_one_window() {
        let (b, t0) = budget();
        // 10 ms of 50 used: 0.7 of a core spare, 700 copies at 50 µs.
        assert_eq!(b.refill_from(t0 + MS(50), MS(10), Duration::ZERO).tokens, 700);
        let admitted = (0..300).filter(|_| b.admit_at(t0 + MS(60), 90)).count();
        assert_eq!(admitted, 300);
        // 30 ms of the next 50: 300 fresh, and at most as many of the 400 left.
        assert_eq!(b.refill_from(t0 + MS(100), MS(40), Duration::ZERO).tokens, 600);
        // Overspent (more asked than admitted): nothing carries, the fresh share stays.
        let refused = (0..700).filter(|_| !b.admit_at(t0 + MS(110), 90)).count();
        assert_eq!(refused, 100);
        assert_eq!(b.refill_from(t0 + MS(150), MS(65), Duration::ZERO).tokens, 400);
    }

    #[test]
    fn a_budget_not_refilled_for_two_windows_admits_nothing() {
        let (b, t0) = budget();
        b.refill_from(t0 + MS(50), Duration::ZERO, Duration::ZERO);
        assert!(b.admit_at(t0 + MS(140), 90));
        assert!(!b.admit_at(t0 + MS(151), 90));
    }

    #[test]
    fn shadow_work_is_not_the_foreground_and_sets_the_cost_per_copy() {
        let (b, t0) = budget();
        for _ in 0..1000 {
            b.done();
        }
        // 30 ms of the process's 40 were 1,000 copies at 30 µs: the foreground used 10 ms.
        let s = b.refill_from(t0 + MS(50), MS(40), MS(30));
        assert!((s.foreground - 0.2).abs() < 1e-9, "{}", s.foreground);
        // The first measurement replaces the guess of 50 µs: (0.9 - 0.2) × 50 ms / 30 µs.
        assert_eq!(s.per_copy, US(30));
        assert_eq!(s.tokens, 1166);
        assert_eq!(s.shadow, MS(30), "the window's shadow work, for the counter");
        // Later ones are smoothed: 1,000 more at 70 µs, (3 × 30 + 70) / 4 = 40 µs.
        for _ in 0..1000 {
            b.done();
        }
        let s = b.refill_from(t0 + MS(100), MS(90), MS(100));
        assert_eq!(s.per_copy, US(40));
        assert_eq!(s.shadow, MS(70));
    }

    #[test]
    fn the_limit_follows_the_snapshot() {
        let (b, t0) = budget();
        b.tokens.store(1, Ordering::Relaxed); // one copy's worth, spent on the next line
        assert!(b.admit_at(t0, 50)); // sets 50%
        let s = b.refill_from(t0 + MS(50), MS(25), Duration::ZERO);
        assert_eq!(s.tokens, 0); // 50% used of 50% allowed
    }
}
