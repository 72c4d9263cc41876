//! Copies to local pools that only serve shadows, run on the shadow runtime's own thread.
//!
//! The dispatcher takes the copies queued since its last tick (a millisecond) together. A copy
//! whose request the client path already decoded, going to one local pool at idle priority
//! (one that only serves as a shadow: no client waits for its engines), runs right there as
//! part of one batch per pool ([`inference::Pool::run_here`]) and is compared and recorded at
//! once: no task, no hand-over to the pool's worker and back. That hand-over cost two thread
//! wake-ups per batch on a core the client path shares. Everything else (remote shadows, a
//! remote primary's undecoded body, several shadows for one request) runs on a task as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use inference::Pool;

use super::{Input, Job, Mirror, Pick, Primary, Queued};
use crate::routing::snapshot::Backend;

/// Where the dispatcher sends a queued copy.
pub(super) enum Way {
    /// Runs it itself, with the tick's other copies to the same pool.
    Here(Here),
    /// On a task, as it came.
    Task(Queued),
}

/// A copy the dispatcher runs itself.
pub(super) struct Here {
    pool: Arc<Pool>,
    pick: Pick,
    job: Job,
}

impl Mirror {
    /// Whether the dispatcher runs the copy itself (see the module comment).
    pub(super) fn way(queued: Queued) -> Way {
        let (snap, mut picks, job) = queued;
        let pool = match picks.as_slice() {
            [pick] => match snap.pools.get(&pick.key.shadow) {
                Some(Backend::Local(p)) if p.config().idle_priority => Some(p.clone()),
                _ => None,
            },
            _ => None,
        };
        let decoded = matches!(job.input, Input::Tensors(_))
            && matches!(job.primary, Primary::Outputs(_) | Primary::Failed(_));
        match (pool, picks.pop()) {
            (Some(pool), Some(pick)) if decoded => Way::Here(Here { pool, pick, job }),
            (_, pick) => {
                picks.extend(pick);
                Way::Task((snap, picks, job))
            }
        }
    }

    /// Runs the copies: one batch run per pool, then each compared and recorded as a task
    /// would have.
    pub(super) fn run_here(&self, copies: Vec<Here>) {
        let mut by_pool: HashMap<*const Pool, Vec<Here>> = HashMap::new();
        for copy in copies {
            by_pool.entry(Arc::as_ptr(&copy.pool)).or_default().push(copy);
        }
        for copies in by_pool.into_values() {
            let pool = copies[0].pool.clone();
            let mut requests = Vec::with_capacity(copies.len());
            let mut waiting = Vec::with_capacity(copies.len());
            for Here { pick, job, .. } in copies {
                // `way` took decoded inputs and answers only: nothing is decoded here.
                let inputs = job.input.decode().0.unwrap_or_default();
                requests.push(inputs.clone());
                let primary = job.primary.decode();
                waiting.push((
                    pick,
                    job.request_id,
                    Arc::new(inputs),
                    primary,
                    job.primary_latency,
                    job.forced,
                ));
            }
            let started = Instant::now();
            let answers = pool.run_here(requests);
            let latency = started.elapsed();
            for ((pick, request_id, inputs, primary, primary_latency, forced), answer) in
                waiting.into_iter().zip(answers)
            {
                let shadow = answer.map_err(|e| e.to_string()).map(|o| super::named(&pool, o));
                self.record(
                    pick,
                    request_id,
                    inputs,
                    primary,
                    shadow,
                    primary_latency,
                    latency,
                    forced,
                );
            }
        }
    }
}
