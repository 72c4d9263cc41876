//! Copies to local pools that only serve shadows, run without a task: on the I/O thread that
//! answered the request, in its quiet turns, or on the shadow runtime's own thread.
//!
//! Such a copy (its request already decoded by the client path, one shadow, a local pool at
//! idle priority: no client waits for its engines) runs as part of one batch per pool
//! ([`inference::Pool::run_here`]) and is compared and recorded at once: no task, no hand-over
//! to the pool's worker and back (that cost two thread wake-ups per batch on a core the client
//! path shares). Everything else (remote shadows, a remote primary's undecoded body, several
//! shadows for one request) runs on a task of the shadow runtime.
//!
//! Where (`shadow.local_copies`, `auto` by default):
//!
//! - **On the I/O thread** (`io_threads`; `auto` when there are as many I/O threads as cores
//!   the process may use: [`on_io_threads`]). The copy waits in the thread's queue; a drainer
//!   task of that thread wakes every [`TICK`] and runs a slice of the copies only in a quiet
//!   turn: one that started no client request since its last yield, the client path's ready
//!   work done first. A slice costs about [`SLICE_BUDGET`] (what one copy costs the thread is
//!   measured) but takes at least [`MIN_SLICE`] copies within [`SLICE_CEILING`], so a request
//!   that arrives during one waits about as long as behind one or a few more requests; a pool
//!   whose model run costs more than its `inline_max`
//!   ([`inference::Pool::here_cost`]) runs its copies on the shadow thread. Why: on a core the
//!   shadow thread shares with an I/O thread, every wake-up of the I/O thread while the shadow
//!   thread runs is a preemption. In `loadtests/bench_shadow.sh`'s setting (one core, 27,800–32,000
//!   requests/s; a one-off with `perf` and per-thread CPU, docs/performance.md) 77% of the shadow
//!   thread's time went to being preempted, and running the copies here instead cut the mirrored
//!   gateway's CPU per request by about a tenth.
//! - **On the shadow thread** (`shadow_thread`; `auto` otherwise): the dispatcher takes the
//!   copies queued since its last tick (a millisecond) together, at idle priority.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inference::Pool;

use super::record::DropReason;
use super::{Input, Job, Mirror, Pick, Primary, Queued};
use crate::config::LocalCopies;
use crate::routing::snapshot::{Backend, Snapshot};

/// How long an I/O thread's copies gather before its drainer runs them: batches of a
/// millisecond's copies run a model far more cheaply per row than one copy at a time.
const TICK: Duration = Duration::from_millis(1);

/// Copies in one slice, at most, whatever the model costs.
const MAX_SLICE: usize = 32;

/// What one slice may cost, at most (a single copy that costs more still runs alone): about
/// what one client request costs the I/O thread at half load in `loadtests/bench_shadow.sh`
/// (20 µs), so that a request arriving during a slice waits about as long as behind one more
/// request. Alternating 5 s turns at 38,500/s (a one-off, `docs/performance.md`), the mirrored
/// gateway's p90 against the plain one's: 94–115 µs against 52–64 with slices of 32 copies
/// (about 150 µs), 65–77 against 48–63 with 4 (about 20 µs); with slices of one or two
/// copies, which cost more per copy, 1,806–120,997 copies were shed per turn against
/// 26–9,633 with 4.
const SLICE_BUDGET: Duration = Duration::from_micros(20);

/// Copies a slice takes even past [`SLICE_BUDGET`], while they stay within [`SLICE_CEILING`]:
/// a slice pays a fixed cost (its model run's overhead, and code that went cold since the
/// thread last ran copies) that its copies share, so a copy in a small slice costs more. On a
/// slow host (2026-12-05, where the budget held one copy), `loadtests/bench_shadow.sh`
/// measured 13.5 µs a copy at half load with slices of about one and 8.0 µs with four. On
/// the AMD host of 2026-12-07 (a one-off, docs/performance.md: 18,000/s, eight rounds of
/// 6 s turns, plain, four and eight in turn) slices of four cost 10.2–12.1 µs a copy and
/// eight 7.4–8.8 µs; 27–71% against 44–96% of the copies compared (medians 47% and 74%),
/// the primary's p99 against the plain gateway's a median of 1.47× against 1.05×.
const MIN_SLICE: usize = 8;

/// The most a slice of up to [`MIN_SLICE`] copies may cost: a heavy model's copies (up to the
/// pool's `inline_max` each) still run one at a time.
const SLICE_CEILING: Duration = Duration::from_micros(120);

/// Where the dispatcher sends a queued copy.
pub(super) enum Way {
    /// Runs it itself, with the tick's other copies to the same pool.
    Here(Here),
    /// On a task, as it came.
    Task(Queued),
}

/// A copy run without a task.
pub(super) struct Here {
    pool: Arc<Pool>,
    pub(super) pick: Pick,
    job: Job,
}

/// The shadow-only local pool a request's copies can run in without a task, if any.
fn pool_for(snap: &Snapshot, picks: &[Pick], job: &Job) -> Option<Arc<Pool>> {
    let [pick] = picks else { return None };
    let decoded = matches!(job.input, Input::Tensors(_))
        && matches!(job.primary, Primary::Outputs(_) | Primary::Failed(_));
    decoded
        .then(|| shadow_only_pool(snap, &pick.pair.key.shadow).cloned())
        .flatten()
}

/// The pool, if it is a local one that only serves shadows (its engines at idle priority).
fn shadow_only_pool<'a>(snap: &'a Snapshot, pool: &str) -> Option<&'a Arc<Pool>> {
    match snap.pools.get(pool) {
        Some(Backend::Local(p)) if p.config().idle_priority => Some(p),
        _ => None,
    }
}

/// Whether the pool is a local one that only serves shadows.
pub(super) fn shadow_only_local(snap: &Snapshot, pool: &str) -> bool {
    shadow_only_pool(snap, pool).is_some()
}

/// Whether copies to shadow-only local pools run on the I/O threads: with `auto`, when there
/// are as many I/O threads as cores the process may use. With fewer, a core without an I/O
/// thread runs the shadow thread and preempts no one; with more, an I/O thread's slice would
/// hold up another I/O thread on its core, which (unlike the idle-priority shadow thread)
/// cannot be preempted for a client's request: `proxy/tests/shadow_isolation.rs`'s local case
/// measured that (docs/performance.md).
fn on_io_threads(setting: LocalCopies, io_threads: usize, cores: usize) -> bool {
    match setting {
        LocalCopies::IoThreads => true,
        LocalCopies::ShadowThread => false,
        LocalCopies::Auto => io_threads == cores,
    }
}

impl Mirror {
    /// Whether the dispatcher runs the copy itself (see the module comment).
    pub(super) fn way(queued: Queued) -> Way {
        let (snap, mut picks, job) = queued;
        match pool_for(&snap, &picks, &job) {
            Some(pool) => {
                let pick = picks.pop().expect("one pick");
                Way::Here(Here { pool, pick, job })
            }
            None => Way::Task((snap, picks, job)),
        }
    }

    /// Queues the copy on this I/O thread when that is where it runs (see the module
    /// comment); gives it back otherwise.
    pub(super) fn on_io_thread(&self, queued: Queued) -> Option<Queued> {
        let (snap, mut picks, job) = queued;
        let io_threads = on_io_threads(snap.config.shadow.local_copies, snap.config.threads, self.0.cores);
        let pool = io_threads.then(|| pool_for(&snap, &picks, &job)).flatten();
        let quick = |p: &Arc<Pool>| p.here_cost().is_some_and(|c| c <= p.config().inline_max);
        // The runtime is looked up only for a copy that runs here (shadow_thread: never).
        let Some((pool, runtime)) = pool
            .filter(quick)
            .and_then(|p| Some((p, tokio::runtime::Handle::try_current().ok()?)))
        else {
            return Some((snap, picks, job));
        };
        let copy = Here {
            pool,
            pick: picks.pop().expect("one pick"),
            job,
        };
        WAITING.with(|w| {
            let mut copies = w.copies.lock();
            // Beyond `shadow.max_queued`, a copy is dropped and counted.
            if copies.len() >= snap.config.shadow.max_queued {
                drop(copies);
                self.dropped(&copy.pick.pair, DropReason::QueueFull);
                return;
            }
            copies.push_back(copy);
            drop(copies);
            if !w.draining.swap(true, Ordering::AcqRel) {
                let (this, w) = (self.clone(), w.clone());
                runtime.spawn(async move { this.drain(w).await });
            }
        });
        None
    }

    /// Runs a thread's queued copies on that thread, a slice per quiet turn: every tick while
    /// there are copies, then ends (the next copy starts another).
    async fn drain(self, w: Arc<Waiting>) {
        loop {
            tokio::time::sleep(TICK).await;
            loop {
                // The client path first: yield until a turn in which it started no request.
                loop {
                    let seen = SEEN.with(Cell::get);
                    tokio::task::yield_now().await;
                    if SEEN.with(Cell::get) == seen {
                        break;
                    }
                }
                let slice = w.slice();
                if slice.is_empty() {
                    *w.emptied.lock() = Some(Instant::now());
                    break;
                }
                // Elapsed, not the thread's CPU clock (a system call per read): nothing else
                // runs on this thread during a slice (see inference::Pool::try_run_here).
                let (started, n) = (Instant::now(), slice.len());
                let left = self.run_copies(slice, false);
                let spent = started.elapsed();
                w.measured(n - left.len(), spent);
                // Counted as shadow work by the admission, like the shadow thread's.
                inference::priority::add_background_cpu(spent);
                if !left.is_empty() {
                    // Another thread runs the pool's engines: the rest waits for the next tick.
                    let mut copies = w.copies.lock();
                    for copy in left.into_iter().rev() {
                        copies.push_front(copy);
                    }
                    break;
                }
            }
            let copies = w.copies.lock();
            if copies.is_empty() {
                w.draining.store(false, Ordering::Release);
                return;
            }
        }
    }

    /// Runs the copies (the shadow thread's tick): one batch run per pool, then each
    /// compared and recorded as a task would have.
    pub(super) fn run_here(&self, copies: Vec<Here>) {
        let left = self.run_copies(copies, true);
        debug_assert!(left.is_empty(), "a caller that waits runs every copy");
    }

    /// Runs the copies whose pool has an idle engine (every copy when `wait`), and gives back
    /// the others.
    fn run_copies(&self, copies: Vec<Here>, wait: bool) -> Vec<Here> {
        let mut by_pool: HashMap<*const Pool, Vec<Here>> = HashMap::new();
        for copy in copies {
            by_pool.entry(Arc::as_ptr(&copy.pool)).or_default().push(copy);
        }
        let mut left = Vec::new();
        for copies in by_pool.into_values() {
            let pool = copies[0].pool.clone();
            // `pool_for` took decoded inputs and answers only: nothing is decoded here.
            let (requests, jobs): (Vec<_>, Vec<_>) = copies
                .into_iter()
                .map(|Here { pick, job, .. }| {
                    let Input::Tensors(inputs) = &job.input else {
                        unreachable!("copies run here are decoded")
                    };
                    (inputs.clone(), (pick, job))
                })
                .unzip();
            let started = Instant::now();
            let answers = if wait {
                pool.run_here(requests)
            } else {
                match pool.try_run_here(requests) {
                    Ok(answers) => answers,
                    Err(_) => {
                        left.extend(jobs.into_iter().map(|(pick, job)| Here {
                            pool: pool.clone(),
                            pick,
                            job,
                        }));
                        continue;
                    }
                }
            };
            let latency = started.elapsed();
            self.0
                .metrics
                .shadow_local_copies
                .with_label_values(&[if wait { "shadow" } else { "io" }])
                .inc_by(jobs.len() as u64);
            for ((pick, job), answer) in jobs.into_iter().zip(answers) {
                let inputs = job.input.decode().0.unwrap_or_default();
                let shadow = answer.map_err(|e| e.to_string()).map(|o| super::named(&pool, o));
                self.record(
                    pick,
                    job.request_id,
                    Arc::new(inputs),
                    job.primary.decode(),
                    shadow,
                    job.primary_latency,
                    latency,
                    job.forced,
                );
            }
        }
        left
    }
}

/// One I/O thread's copies waiting for its drainer.
#[derive(Default)]
struct Waiting {
    /// A deque: a slice taken from the front of a `Vec` moved every copy behind it, which
    /// was 5.6% of the I/O thread's samples at 40,000/s with slices of a few copies (`perf
    /// record --call-graph dwarf`, a one-off).
    copies: parking_lot::Mutex<std::collections::VecDeque<Here>>,
    draining: AtomicBool,
    /// When the drainer last ran every copy it had (never, on a thread that runs none).
    emptied: parking_lot::Mutex<Option<Instant>>,
    /// What one copy cost this thread, model, comparison and record together (ns, smoothed;
    /// 0 before the first slice).
    per_copy_ns: std::sync::atomic::AtomicU64,
}

/// How recently this thread's drainer must have run every copy it had for
/// [`drainer_keeps_up`]: the tick its copies gather for, and as long again. Also the most
/// copy work (copies waiting times what one costs) a drainer that has not emptied its queue
/// that recently may have waiting and still count as keeping up.
const KEEPING_UP: Duration = Duration::from_millis(2);

/// Whether this I/O thread's drainer keeps up: within the last [`KEEPING_UP`] it ran every
/// copy it had, or the copies waiting would take it less than that, in quiet turns only, so
/// the thread has had time to spare for copies whatever the CPU budget estimated. The
/// admission takes that as room for one more copy to a shadow-only local pool. False on a
/// thread whose copies run elsewhere (its drainer never ran).
///
/// Why the backlog too: where a thread sleeps between requests, waking it costs more than
/// the request (a one-off on a slow host, 2026-12-05: one I/O thread spent 122 µs per request
/// at 2,000/s, 40 µs at 24,000/s, 21 µs at its maximum of 47,000/s), so the budget, which
/// sees that cost as the foreground's, left room for 5,000–10,500 copies a second at 24,000/s,
/// while a thread kept awake by its copies ran them all in some turns. A drainer busy most
/// of a tick rarely empties its queue within 2 ms, but its backlog stays short while it
/// keeps up; when it falls behind the backlog grows past the bound and the budget decides.
pub(super) fn drainer_keeps_up(now: Instant) -> bool {
    WAITING.with(|w| {
        let emptied = *w.emptied.lock();
        // The queue's length is read only when the drainer has not emptied it lately.
        keeps_up(emptied, now, || {
            (w.copies.lock().len(), w.per_copy_ns.load(Ordering::Relaxed))
        })
    })
}

/// [`drainer_keeps_up`] from the time the queue was last emptied and, when that is not
/// recent, the copies waiting and what one costs (ns; 0 before the first slice).
fn keeps_up(emptied: Option<Instant>, now: Instant, backlog: impl FnOnce() -> (usize, u64)) -> bool {
    let Some(at) = emptied else { return false };
    if now.saturating_duration_since(at) < KEEPING_UP {
        return true;
    }
    let (waiting, each_ns) = backlog();
    (waiting as u128) * expected_per_copy(each_ns).as_nanos() < KEEPING_UP.as_nanos()
}

/// What a copy is expected to cost this thread: the measured cost per copy (ns), or what a
/// whole slice may cost before any was measured.
fn expected_per_copy(measured_ns: u64) -> Duration {
    match measured_ns {
        0 => SLICE_BUDGET,
        ns => Duration::from_nanos(ns),
    }
}

impl Waiting {
    /// The next slice: copies from the front while what they are expected to cost (this
    /// thread's measured cost per copy; one copy alone before any was measured) stays within
    /// [`SLICE_BUDGET`].
    fn slice(&self) -> Vec<Here> {
        let mut copies = self.copies.lock();
        let each = expected_per_copy(self.per_copy_ns.load(Ordering::Relaxed));
        let n = slice_len(std::iter::repeat_n(each, copies.len()), SLICE_BUDGET);
        copies.drain(..n).collect()
    }

    /// A slice ran `copies` copies in `spent` of this thread's CPU: the cost per copy,
    /// smoothed over a few slices.
    fn measured(&self, copies: usize, spent: Duration) {
        if copies == 0 {
            return;
        }
        let now = (spent.as_nanos() as u64 / copies as u64).max(1);
        let before = self.per_copy_ns.load(Ordering::Relaxed);
        let smoothed = if before == 0 { now } else { (before * 3 + now) / 4 };
        self.per_copy_ns.store(smoothed, Ordering::Relaxed);
    }
}

/// How many of the copies (their expected costs, in order) make one slice: the first always,
/// then while the sum stays within `budget` (up to [`MIN_SLICE`] copies, within
/// [`SLICE_CEILING`]), [`MAX_SLICE`] at most.
fn slice_len(costs: impl Iterator<Item = Duration>, budget: Duration) -> usize {
    let (mut n, mut cost) = (0, Duration::ZERO);
    for c in costs.take(MAX_SLICE) {
        cost += c;
        let within = cost <= budget || (n < MIN_SLICE && cost <= SLICE_CEILING);
        if n > 0 && !within {
            break;
        }
        n += 1;
    }
    n
}

/// Counts a client request started on this thread: a drainer runs copies only in turns that
/// started none.
pub fn client_request_seen() {
    SEEN.with(|s| s.set(s.get() + 1));
}

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
    static WAITING: Arc<Waiting> = Arc::new(Waiting::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_runs_copies_on_the_io_threads_when_each_has_a_core_of_its_own() {
        use LocalCopies::*;
        for (setting, threads, cores, want) in [
            (Auto, 1, 1, true),
            (Auto, 4, 4, true),
            // A core no I/O thread uses: the shadow thread preempts no one there.
            (Auto, 1, 2, false),
            // Two I/O threads on one core: a slice would hold up the other one.
            (Auto, 2, 1, false),
            (IoThreads, 2, 1, true),
            (ShadowThread, 1, 1, false),
        ] {
            assert_eq!(
                on_io_threads(setting, threads, cores),
                want,
                "{setting:?}, {threads} threads, {cores} cores"
            );
        }
    }

    #[test]
    fn the_cost_per_copy_is_measured_and_smoothed() {
        let w = Waiting::default();
        w.measured(0, Duration::from_micros(50)); // nothing ran: nothing learnt
        assert_eq!(w.per_copy_ns.load(Ordering::Relaxed), 0);
        w.measured(4, Duration::from_micros(20));
        assert_eq!(
            w.per_copy_ns.load(Ordering::Relaxed),
            5_000,
            "the first measurement is taken as it is"
        );
        w.measured(4, Duration::from_micros(36));
        assert_eq!(w.per_copy_ns.load(Ordering::Relaxed), 6_000, "(3 × 5 + 9) / 4 µs");
        // At 6 µs a copy, 20 µs holds 3, but a slice takes MIN_SLICE while within 120 µs.
        assert_eq!(
            slice_len(std::iter::repeat_n(Duration::from_micros(6), 10), SLICE_BUDGET),
            MIN_SLICE
        );
    }

    #[test]
    fn a_drainer_keeps_up_while_it_empties_its_queue_or_its_backlog_is_short() {
        let now = Instant::now();
        let queue = |waiting: usize, each_us: u64| move || (waiting, each_us * 1_000);
        let stale = Some(now - KEEPING_UP);
        assert!(!keeps_up(None, now, queue(0, 0)), "a drainer that never ran");
        assert!(keeps_up(Some(now), now, || unreachable!(
            "not read when recently emptied"
        )));
        // Not emptied lately: 2 ms of copy work waiting at most.
        assert!(keeps_up(stale, now, queue(199, 10)), "1.99 ms waiting");
        assert!(!keeps_up(stale, now, queue(200, 10)), "2 ms waiting");
        assert!(
            !keeps_up(stale, now, queue(100, 0)),
            "unmeasured copies count 20 µs each"
        );
        assert!(keeps_up(stale, now, queue(99, 0)));
        assert!(keeps_up(stale, now, queue(0, 500)), "nothing waiting");
    }

    #[test]
    fn a_drainer_keeps_up_by_its_own_threads_state() {
        // On a thread of its own: the state is the thread's.
        std::thread::spawn(|| {
            let now = Instant::now();
            assert!(!drainer_keeps_up(now), "a thread whose drainer never ran");
            WAITING.with(|w| *w.emptied.lock() = Some(now));
            assert!(drainer_keeps_up(now + Duration::from_millis(1)));
            assert!(
                drainer_keeps_up(now + KEEPING_UP),
                "2 ms without emptying its queue, but nothing waits in it"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_slice_stays_within_its_budget_and_max_slice() {
        // (slice_len's budget is SLICE_BUDGET in use; any budget here.)
        let us = Duration::from_micros;
        let costs = |each: u64, n: usize| std::iter::repeat_n(us(each), n);
        // 10 µs each within 100 µs: ten copies, the eleventh would cross it.
        assert_eq!(slice_len(costs(10, 50), us(100)), 10);
        // Cheap copies: MAX_SLICE, whatever the budget leaves.
        assert_eq!(slice_len(costs(1, 50), us(100)), MAX_SLICE);
        // One copy over the budget still runs (alone), or it would never run.
        assert_eq!(slice_len(costs(500, 3), us(100)), 1);
        // Over the budget, up to MIN_SLICE copies within SLICE_CEILING (120 µs): 8 of 13 µs,
        // 4 of 25 µs (a fifth would cross 120 µs), and MIN_SLICE at most.
        assert_eq!(slice_len(costs(13, 10), us(20)), 8);
        assert_eq!(slice_len(costs(25, 10), us(20)), 4);
        assert_eq!(slice_len(costs(5, 40), us(20)), MIN_SLICE);
        assert_eq!(slice_len(costs(10, 0), us(100)), 0);
        // Mixed: 40 + 50 fit in 100; + 40 crosses it and SLICE_CEILING (120 µs).
        assert_eq!(slice_len([us(40), us(50), us(40)].into_iter(), us(100)), 2);
        // + 30 crosses the budget but not the ceiling: still within MIN_SLICE.
        assert_eq!(slice_len([us(40), us(50), us(30)].into_iter(), us(100)), 3);
    }
}
