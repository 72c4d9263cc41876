//! Background threads that must never slow the foreground: Linux's `SCHED_IDLE` policy
//! runs a thread only when no normal thread wants the CPU, and a normal thread that wakes up
//! preempts it at once. (`nice 19` still takes a share of the CPU under load.)

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
}
