//! Background threads that must never slow the foreground: Linux's `SCHED_IDLE` policy
//! runs a thread only when no normal thread wants the CPU, and a normal thread that wakes up
//! preempts it at once. (`nice 19` still takes a share of the CPU under load.)
//!
//! And what they cost: the CPU time of the calling thread and of the process, and a
//! process-wide count of what background threads spent ([`background_cpu`]: idle-priority pool
//! workers, a gateway's shadow store writer), from which a gateway tells its foreground's CPU
//! from its shadows'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// CPU time the calling thread has used (zero where the clock is missing).
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used, all threads.
pub fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec on this stack.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of background threads (idle-priority pool workers, the shadow store's writer),
/// added by each as it goes.
static BACKGROUND_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// Adds CPU time spent by a background (idle-priority) worker.
pub fn add_background_cpu(spent: Duration) {
    BACKGROUND_CPU_NS.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
}

/// CPU time the background threads of this process have used so far.
pub fn background_cpu() -> Duration {
    Duration::from_nanos(BACKGROUND_CPU_NS.load(Ordering::Relaxed))
}

/// Moves the calling thread to `SCHED_IDLE`, or failing that to nice 19. Best effort: on
/// other systems, or without permission, the thread keeps its priority (logged at debug).
pub fn idle() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: system calls about the calling thread only (tid 0 / its own tid); the
        // parameter struct lives on this stack for the duration of the call.
        let ok = unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 || {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 19) == 0
            }
        };
        if !ok {
            tracing::debug!("could not lower this thread's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_thread_moves_to_idle_priority_and_others_do_not() {
        let policy = std::thread::spawn(|| {
            super::idle();
            // SAFETY: queries the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn cpu_clocks_count_work_and_not_sleep() {
        let (t0, p0) = (super::thread_cpu(), super::process_cpu());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = super::thread_cpu() - t0;
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = super::thread_cpu() - t0 - slept;
        assert!(slept < std::time::Duration::from_millis(10), "{slept:?}");
        assert!(worked >= std::time::Duration::from_millis(10), "{worked:?}");
        assert!(super::process_cpu() - p0 >= worked);
    }
}
