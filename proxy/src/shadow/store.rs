//! The comparison store: SQLite (bundled), written by one thread off the request path.
//!
//! Two tables:
//! - `minutes`: one row per (route, primary version, shadow pool, shadow version, minute)
//!   holding that minute's [`Aggregate`] — counts, agreement, deltas, latency histograms,
//!   confusion matrix, drops. Exact for every mirrored request, so reports over any window
//!   (to the minute) need nothing else.
//! - `records`: every disagreement and every error with its inputs and both outputs, plus a
//!   sample of agreements (`shadow.sample_agreements`).
//!
//! Every compared copy is added to its pair's minute where it was compared, on the shadow
//! runtime's thread ([`Recorder::record`]): the writer takes those aggregates every 50 ms, and
//! gets through a bounded channel only the records it keeps and the drop counts ([`Event`];
//! never blocking: when the channel is full, or when the records waiting to be written hold
//! `shadow.max_backlog_bytes`, the record is counted and dropped; aggregates are never lost).
//! Handing it every copy cost the writer 1.0–1.4 µs per copy (one more thread touching and
//! freeing each copy's tensors; docs/shadows.md). The writer commits one transaction per
//! `shadow.flush_ms`. A crash loses what was not yet committed: the events of the last
//! `flush_ms` + 50 ms (0.55 s by default) while the writer keeps up; when it falls behind (it
//! runs at idle priority, so on a saturated machine it does), at most the backlog, whose age
//! the writer reports after each commit ([`Recorder::lag`], `gateway_shadow_store_lag_seconds`).
//! A graceful stop ([`Recorder::close`]) writes everything accepted. The file (and SQLite's
//! `-wal` and `-shm` beside it, which take its mode) is made readable by its owner only: it
//! holds inputs and outputs of real requests.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use inference::NamedTensor;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use super::record::{PairKey, Record};
use crate::config::ShadowSettings;

pub enum Event {
    /// A record to keep (its pair's minute has it already: [`Recorder::record`]).
    Record(Box<Record>),
    /// `count` copies of one pair not made, for one reason (summed since the last event).
    Dropped {
        key: PairKey,
        reason: &'static str,
        count: u64,
    },
    /// Write everything received so far, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
    Stop,
}

pub use super::aggregate::{Aggregate, latency_bucket, latency_quantile_ms};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS minutes (
    route TEXT NOT NULL, primary_version TEXT NOT NULL, shadow TEXT NOT NULL,
    shadow_version TEXT NOT NULL, minute INTEGER NOT NULL, requests INTEGER NOT NULL,
    agg TEXT NOT NULL,
    PRIMARY KEY (route, primary_version, shadow, shadow_version, minute)
);
CREATE INDEX IF NOT EXISTS minutes_by_time ON minutes (minute);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, route TEXT NOT NULL,
    primary_version TEXT NOT NULL, shadow TEXT NOT NULL, shadow_version TEXT NOT NULL,
    request_id TEXT NOT NULL,
    agree INTEGER,              -- 1 agree, 0 disagree, NULL: not compared (an error)
    rows INTEGER, max_delta REAL, primary_ms REAL NOT NULL, shadow_ms REAL,
    primary_error TEXT, shadow_error TEXT,
    inputs TEXT, primary_outputs TEXT, shadow_outputs TEXT, comparison TEXT
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (at_ms);
";

/// Opens (creating if needed, with mode 0600) the store for writing.
pub fn open(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // WAL: readers (reports, `gateway report`) never block the writer, and a process crash
    // loses nothing that was committed.
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|_| conn.busy_timeout(Duration::from_secs(5)))
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(conn)
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Tensors as the protocol's JSON (`[{name, datatype, shape, data}]`).
pub fn tensors_json(tensors: &[NamedTensor]) -> String {
    serde_json::to_string(&inference::protocol::codec::tensors_json(tensors)).expect("tensors serialize")
}

/// The sending side, held by the gateway; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Event>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    pub path: PathBuf,
    backlog: Arc<Backlog>,
    /// Aggregates of the copies recorded since the writer last took them.
    pending: Arc<Mutex<Pending>>,
    /// `shadow.sample_agreements`, as the store was started with.
    sample_agreements: f64,
}

/// Each pair's aggregate of its current minute, and those of minutes a pair has left.
/// Bounded: one entry per pair, plus one per pair and minute boundary between two of the
/// writer's takes (every 50 ms).
#[derive(Default)]
struct Pending {
    /// Keyed by the pair's shared key (a copy clones no string) and hashed with foldhash:
    /// SipHash over four strings was most of what recording a copy cost under this lock.
    open: hashbrown::HashMap<Arc<PairKey>, (i64, Aggregate), foldhash::fast::RandomState>,
    closed: Vec<(Arc<PairKey>, i64, Aggregate)>,
}

/// Records sent and not yet written (or dropped by the writer), in bytes; and how old the
/// oldest record of the last commit was.
#[derive(Default)]
struct Backlog {
    bytes: AtomicUsize,
    max: usize,
    lag_ms: AtomicU64,
}

/// Events waiting for the writer, at most; beyond this they are dropped and counted.
const QUEUE: usize = 65_536;

impl Recorder {
    /// Opens the store and starts its writer thread.
    pub fn start(settings: &ShadowSettings) -> Result<Recorder, String> {
        let conn = open(&settings.store)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let backlog = Arc::new(Backlog {
            max: settings.max_backlog_bytes,
            ..Backlog::default()
        });
        let pending = Arc::new(Mutex::new(Pending::default()));
        let writer = Writer {
            conn,
            backlog: backlog.clone(),
            pending: pending.clone(),
            settings: settings.clone(),
            minutes: HashMap::new(),
            dirty: HashSet::new(),
            records: Vec::new(),
            last_retention: Instant::now() - Duration::from_secs(3600),
        };
        let handle = std::thread::Builder::new()
            .name("shadow-store".into())
            .spawn(move || {
                // Off the request path: it yields the CPU to clients when the machine is busy.
                inference::priority::idle();
                writer.run(rx)
            })
            .map_err(|e| format!("cannot start the shadow store writer: {e}"))?;
        Ok(Recorder {
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
            path: settings.store.clone(),
            backlog,
            pending,
            sample_agreements: settings.sample_agreements,
        })
    }

    /// Adds a compared (or failed) copy to its pair's minute, and hands the record to the
    /// writer when it is kept: every disagreement and error, a sample of agreements
    /// (`shadow.sample_agreements`). False when a kept record was lost ([`Recorder::send`]).
    pub fn record(&self, r: Record) -> bool {
        let minute = unix_ms(r.at) / 60_000;
        {
            let mut pending = self.pending.lock();
            let Pending { open, closed } = &mut *pending;
            match open.get_mut(&r.key) {
                Some((m, agg)) if *m == minute => agg.add(&r),
                Some((m, agg)) => {
                    closed.push((r.key.clone(), *m, std::mem::take(agg)));
                    *m = minute;
                    agg.add(&r);
                }
                None => {
                    let mut agg = Aggregate::default();
                    agg.add(&r);
                    open.insert(r.key.clone(), (minute, agg));
                }
            }
        }
        let keep = match &r.comparison {
            Some(c) if c.agrees() => rand::random::<f64>() < self.sample_agreements,
            // Disagreements and errors: always.
            _ => true,
        };
        !keep || self.send(Event::Record(Box::new(r)))
    }

    /// Hands an event to the writer without waiting. False when the queue is full, the
    /// records waiting hold the backlog's bound already, or the writer has stopped: the event
    /// is lost, and the caller counts it.
    pub fn send(&self, event: Event) -> bool {
        let bytes = match &event {
            Event::Record(r) => r.bytes(),
            _ => 0,
        };
        if bytes > 0 {
            let before = self.backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
            if before + bytes > self.backlog.max {
                self.backlog.bytes.fetch_sub(bytes, Ordering::Relaxed);
                return false;
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.backlog.bytes.fetch_sub(bytes, Ordering::Relaxed);
                false
            }
        }
    }

    /// Bytes of records waiting to be written.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.bytes.load(Ordering::Relaxed)
    }

    /// How old the oldest record of the last commit was when it was committed: what a crash
    /// at that moment would have lost.
    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.backlog.lag_ms.load(Ordering::Relaxed))
    }

    /// Waits (up to `timeout`) until everything sent so far is committed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send_timeout(Event::Flush(done), timeout).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(())))
    }

    /// Writes everything accepted and stops the writer (graceful shutdown). Idempotent.
    pub fn close(&self) {
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = self.tx.send(Event::Stop);
            let _ = handle.join();
        }
    }
}

struct Writer {
    conn: Connection,
    backlog: Arc<Backlog>,
    pending: Arc<Mutex<Pending>>,
    settings: ShadowSettings,
    /// Aggregates of the minutes touched lately, complete (seeded from the store on first
    /// touch, so a restart within a minute adds to that minute instead of replacing it).
    minutes: HashMap<(PairKey, i64), Aggregate>,
    dirty: HashSet<(PairKey, i64)>,
    records: Vec<Record>,
    last_retention: Instant,
}

impl Writer {
    /// Polls the queue rather than blocking on it: a sender never has to wake this thread,
    /// so handing over an event costs the request path no system call.
    fn run(mut self, rx: Receiver<Event>) {
        let tick = self.settings.flush_interval.min(Duration::from_millis(50));
        let mut next_flush = Instant::now() + self.settings.flush_interval;
        let mut counted = inference::priority::thread_cpu();
        loop {
            // Everything this thread does is shadow work, and the admission counts it so (as
            // the foreground's, it made copies look cheaper and the client path busier).
            let now = inference::priority::thread_cpu();
            inference::priority::add_background_cpu(now.saturating_sub(counted));
            counted = now;
            std::thread::sleep(tick);
            let mut flush_now = Vec::new();
            loop {
                match rx.try_recv() {
                    Ok(Event::Record(r)) => self.records.push(*r),
                    Ok(Event::Dropped { key, reason, count }) => {
                        *self
                            .minute(&key, unix_ms(SystemTime::now()) / 60_000)
                            .dropped
                            .entry(reason.to_string())
                            .or_default() += count;
                    }
                    Ok(Event::Flush(done)) => flush_now.push(done),
                    // Stop: everything queued before it was accepted, and has been applied.
                    Ok(Event::Stop) | Err(TryRecvError::Disconnected) => {
                        self.take_pending();
                        self.flush();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            // After the queue: a flush asked for after a copy was recorded finds its aggregate.
            self.take_pending();
            if !flush_now.is_empty() || Instant::now() >= next_flush {
                self.flush();
                next_flush = Instant::now() + self.settings.flush_interval;
                for done in flush_now {
                    let _ = done.send(());
                }
            }
        }
    }

    fn minute(&mut self, key: &PairKey, minute: i64) -> &mut Aggregate {
        let id = (key.clone(), minute);
        self.dirty.insert(id.clone());
        if !self.minutes.contains_key(&id) {
            let stored: Option<String> = self
                .conn
                .query_row(
                    "SELECT agg FROM minutes WHERE route = ?1 AND primary_version = ?2 AND shadow = ?3
                     AND shadow_version = ?4 AND minute = ?5",
                    params![
                        key.route,
                        key.primary_version,
                        key.shadow,
                        key.shadow_version,
                        minute
                    ],
                    |row| row.get(0),
                )
                .optional()
                .unwrap_or(None);
            let agg = stored
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            self.minutes.insert(id.clone(), agg);
        }
        self.minutes.get_mut(&id).expect("inserted above")
    }

    /// Adds the aggregates recorded since the last take to their minutes.
    fn take_pending(&mut self) {
        let Pending { open, closed } = std::mem::take(&mut *self.pending.lock());
        let open = open.into_iter().map(|(key, (minute, agg))| (key, minute, agg));
        for (key, minute, agg) in closed.into_iter().chain(open) {
            self.minute(&key, minute).merge(&agg);
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.write() {
            tracing::error!("shadow store {}: {e}", self.settings.store.display());
        }
        // Minutes more than two minutes old are complete: forget them.
        let now_minute = unix_ms(SystemTime::now()) / 60_000;
        self.minutes.retain(|(_, m), _| *m >= now_minute - 2);
        if self.last_retention.elapsed() >= Duration::from_secs(10) {
            self.last_retention = Instant::now();
            if let Err(e) = self.retention() {
                tracing::warn!("shadow store retention: {e}");
            }
        }
    }

    fn write(&mut self) -> rusqlite::Result<()> {
        if self.dirty.is_empty() && self.records.is_empty() {
            return Ok(());
        }
        let oldest = self.records.iter().map(|r| r.at).min();
        let written: usize = self.records.iter().map(Record::bytes).sum();
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO minutes
                 (route, primary_version, shadow, shadow_version, minute, requests, agg)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for id in self.dirty.drain() {
                let Some(agg) = self.minutes.get(&id) else {
                    continue;
                };
                let (k, minute) = &id;
                upsert.execute(params![
                    k.route,
                    k.primary_version,
                    k.shadow,
                    k.shadow_version,
                    minute,
                    agg.requests as i64,
                    serde_json::to_string(agg).expect("aggregates serialize"),
                ])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (at_ms, route, primary_version, shadow, shadow_version, request_id,
                 agree, rows, max_delta, primary_ms, shadow_ms, primary_error, shadow_error, inputs,
                 primary_outputs, shadow_outputs, comparison)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            for r in self.records.drain(..) {
                let c = r.comparison.as_ref();
                insert.execute(params![
                    unix_ms(r.at),
                    r.key.route,
                    r.key.primary_version,
                    r.key.shadow,
                    r.key.shadow_version,
                    r.request_id,
                    c.map(|c| c.agrees() as i64),
                    c.map(|c| c.rows as i64),
                    c.and_then(|c| c.max_delta()),
                    r.primary_latency.as_secs_f64() * 1e3,
                    r.shadow_latency.map(|d| d.as_secs_f64() * 1e3),
                    r.primary.as_ref().err(),
                    r.shadow.as_ref().err(),
                    r.inputs.as_ref().map(|t| tensors_json(t)),
                    r.primary.as_ref().ok().map(|t| tensors_json(t)),
                    r.shadow.as_ref().ok().map(|t| tensors_json(t)),
                    c.map(|c| serde_json::to_string(c).expect("comparisons serialize")),
                ])?;
            }
        }
        let committed = tx.commit();
        // Written or failed, the records are gone from memory.
        self.backlog.bytes.fetch_sub(written, Ordering::Relaxed);
        if let Some(at) = oldest {
            let lag = SystemTime::now().duration_since(at).unwrap_or_default();
            self.backlog
                .lag_ms
                .store(lag.as_millis() as u64, Ordering::Relaxed);
        }
        committed
    }

    /// Bounded retention: records beyond `keep_records` or older than `keep_age` go, and
    /// minutes older than `keep_age`.
    fn retention(&mut self) -> rusqlite::Result<()> {
        let cutoff = unix_ms(SystemTime::now() - self.settings.keep_age);
        self.conn
            .execute("DELETE FROM records WHERE at_ms < ?1", params![cutoff])?;
        self.conn.execute(
            "DELETE FROM records WHERE id <= (SELECT MAX(id) FROM records) - ?1",
            params![self.settings.keep_records as i64],
        )?;
        self.conn
            .execute("DELETE FROM minutes WHERE minute < ?1", params![cutoff / 60_000])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use inference::{Tensor, TensorData};

    use super::*;

    fn settings(dir: &Path, flush: Duration, keep_records: usize) -> ShadowSettings {
        ShadowSettings {
            max_in_flight: 8,
            max_cpu_percent: 100,
            timeout: Duration::from_secs(1),
            max_body_bytes: 1 << 20,
            store: dir.join("s.sqlite3"),
            keep_records,
            keep_age: Duration::from_secs(3600),
            sample_agreements: 0.0,
            flush_interval: flush,
            max_backlog_bytes: 64 << 20,
            local_copies: crate::config::LocalCopies::Auto,
            max_queued: 4096,
        }
    }

    fn record(label_p: i64, label_s: i64) -> Record {
        let out = |l: i64| {
            vec![NamedTensor {
                name: "label".into(),
                tensor: Tensor::new(vec![1], TensorData::I64(vec![l])).unwrap(),
            }]
        };
        let (p, s) = (out(label_p), out(label_s));
        Record {
            at: SystemTime::now(),
            key: Arc::new(PairKey {
                route: "r".into(),
                primary_version: "1".into(),
                shadow: "s".into(),
                shadow_version: "2".into(),
            }),
            request_id: format!("{label_p}-{label_s}"),
            inputs: None,
            comparison: Some(super::super::compare::compare(&p, &s)),
            primary: Ok(Arc::new(p)),
            shadow: Ok(s),
            primary_latency: Duration::from_millis(1),
            shadow_latency: Some(Duration::from_millis(2)),
        }
    }

    fn count(path: &Path, table: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_graceful_close_writes_everything_accepted() {
        let dir = std::env::temp_dir().join(format!("shadow-store-close-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A flush interval far longer than the test: only close() can have written.
        let rec = Recorder::start(&settings(&dir, Duration::from_secs(60), 100)).unwrap();
        for i in 0..10 {
            assert!(rec.record(record(i % 2, 0)));
        }
        rec.close();
        let path = dir.join("s.sqlite3");
        let agg: String = Connection::open(&path)
            .unwrap()
            .query_row("SELECT agg FROM minutes", [], |r| r.get(0))
            .unwrap();
        let agg: Aggregate = serde_json::from_str(&agg).unwrap();
        assert_eq!(
            (agg.requests, agg.compared, agg.disagreements, agg.mismatches),
            (10, 10, 5, 0)
        );
        assert_eq!(agg.confusion[&1][&0], 5);
        // Disagreements are all recorded; agreements sampled at 0 here.
        assert_eq!(count(&path, "records"), 5);
        assert!(!rec.record(record(0, 1)), "closed");
        // The store and its WAL files are readable by their owner only.
        for name in ["s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"] {
            let f = dir.join(name);
            if f.exists() {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{name}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn copies_of_one_pair_in_two_minutes_count_in_each() {
        let dir = std::env::temp_dir().join(format!("shadow-store-minutes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = Recorder::start(&settings(&dir, Duration::from_secs(60), 100)).unwrap();
        let now = SystemTime::now();
        // One minute, the next, and back: the pair's open minute moves and is set aside.
        for (at, n) in [
            (now - Duration::from_secs(60), 2),
            (now, 3),
            (now - Duration::from_secs(60), 1),
        ] {
            for _ in 0..n {
                let mut r = record(1, 1);
                r.at = at;
                assert!(rec.record(r));
            }
        }
        rec.close();
        let rows: Vec<(i64, i64)> = Connection::open(dir.join("s.sqlite3"))
            .unwrap()
            .prepare("SELECT minute, requests FROM minutes ORDER BY minute")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let minute = unix_ms(now) / 60_000;
        assert_eq!(rows, vec![(minute - 1, 3), (minute, 3)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_backlog_is_bounded_in_bytes() {
        let dir = std::env::temp_dir().join(format!("shadow-store-backlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = settings(&dir, Duration::from_secs(60), 100);
        let one = record(0, 1).bytes();
        s.max_backlog_bytes = one * 3 + one / 2;
        let rec = Recorder::start(&s).unwrap();
        // The writer takes events every 50 ms but writes only every 60 s: three fit, the
        // fourth is refused whoever has it.
        let sent: Vec<bool> = (0..6).map(|_| rec.record(record(0, 1))).collect();
        assert_eq!(sent, [true, true, true, false, false, false]);
        assert_eq!(rec.backlog_bytes(), 3 * one);
        rec.close();
        assert_eq!(rec.backlog_bytes(), 0, "written records leave the backlog");
        assert!(rec.lag() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restart_within_a_minute_adds_to_it_and_retention_bounds_records() {
        let dir = std::env::temp_dir().join(format!("shadow-store-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.sqlite3");
        for _ in 0..2 {
            let rec = Recorder::start(&settings(&dir, Duration::from_millis(20), 3)).unwrap();
            for _ in 0..4 {
                rec.record(record(1, 0));
            }
            rec.close();
        }
        let total: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT SUM(requests) FROM minutes", [], |r| r.get(0))
            .unwrap();
        // Both runs counted: the second adds to the minute the first wrote, not over it.
        assert_eq!(total, 8);
        // keep_records is 3: retention (on the first flush of a writer) trims the 4 + 4.
        let rec = Recorder::start(&settings(&dir, Duration::from_millis(20), 3)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        rec.close();
        assert!(count(&path, "records") <= 3, "{}", count(&path, "records"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
