//! Drops replaced snapshots once no request holds them any more, on a thread of its own
//! rather than an async one: dropping the last reference to a local pool joins its worker
//! threads after they finish what was queued.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

/// How often the snapshots still held by requests are looked at again.
const RECHECK: Duration = Duration::from_millis(50);

/// Runs until every sender is gone. Each item is a replaced snapshot and the pools that go
/// with it (logged when they do). While nothing waits the thread sleeps on the channel: it
/// used to wake every [`RECHECK`] whatever there was to do, 20.8 of an idle mirrored
/// gateway's 235 wake-ups a second, none since (a one-off, 2026-12-08: context switches per
/// thread from `/proc/<pid>/task/*/status` over 10 s, docs/performance.md).
pub(super) fn retire_loop<T>(rx: Receiver<(Arc<T>, Vec<String>)>) {
    let mut waiting: Vec<(Arc<T>, Vec<String>)> = Vec::new();
    loop {
        let next = if waiting.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RECHECK)
        };
        match next {
            Ok(item) => waiting.push(item),
            Err(RecvTimeoutError::Timeout) => {}
            // The gateway is stopping: what is left goes with it.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        waiting.retain(|(snap, pools)| {
            if Arc::strong_count(snap) > 1 {
                return true;
            }
            if !pools.is_empty() {
                tracing::info!(pools = %pools.join(", "), "retired pools: their last request finished");
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says on a channel when it is dropped.
    struct Snapshot(crossbeam_channel::Sender<&'static str>, &'static str);

    impl Drop for Snapshot {
        fn drop(&mut self) {
            let _ = self.0.send(self.1);
        }
    }

    /// The thread's voluntary context switches so far (`/proc`, Linux).
    fn switches(task: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{task}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_snapshot_goes_when_its_last_request_does_and_the_idle_thread_sleeps() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (dropped_tx, dropped) = crossbeam_channel::unbounded();
        let (task_tx, task) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            // "<pid>/task/<tid>": this thread's entry under /proc/self/task.
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            task_tx
                .send(me.file_name().unwrap().to_string_lossy().into_owned())
                .unwrap();
            retire_loop(rx)
        });
        let task = task.recv().unwrap();

        // Nothing waits: the thread blocks on the channel and does not wake (the loop it
        // replaced woke every 50 ms, 6 times in this 300 ms; one spurious wake-up of the
        // parked thread is allowed).
        std::thread::sleep(Duration::from_millis(100));
        let before = switches(&task);
        std::thread::sleep(Duration::from_millis(300));
        let woke = switches(&task) - before;
        assert!(woke <= 1, "an idle retire thread woke {woke} times in 300 ms");

        // A snapshot nobody else holds goes at once.
        tx.send((Arc::new(Snapshot(dropped_tx.clone(), "unheld")), Vec::new()))
            .unwrap();
        assert_eq!(dropped.recv_timeout(Duration::from_secs(5)), Ok("unheld"));

        // One a request still holds stays until the request lets it go, then goes.
        let held = Arc::new(Snapshot(dropped_tx, "held"));
        tx.send((held.clone(), vec!["old-pool".into()])).unwrap();
        std::thread::sleep(Duration::from_millis(3 * RECHECK.as_millis() as u64));
        assert!(dropped.try_recv().is_err(), "dropped while a request held it");
        drop(held);
        assert_eq!(dropped.recv_timeout(Duration::from_secs(5)), Ok("held"));

        // Every sender gone: the thread ends, even while it sleeps on the channel.
        drop(tx);
        thread.join().unwrap();
    }
}
