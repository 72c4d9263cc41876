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
use std::time::{Duration, Instant};

use inference::{NamedTensor, Pool};

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
    request_id: String,
    inputs: Vec<NamedTensor>,
    primary: Result<Vec<NamedTensor>, String>,
    primary_latency: Duration,
    forced: bool,
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
        let Job {
            request_id,
            input,
            primary,
            primary_latency,
            forced,
        } = job;
        let back = |input, primary| Job {
            request_id: request_id.clone(),
            input,
            primary,
            primary_latency,
            forced,
        };
        let primary = match primary {
            Primary::Outputs(o) => Ok(o),
            Primary::Failed(e) => Err(e),
            oip @ Primary::Oip { .. } => return Way::Task((snap, picks, back(input, oip))),
        };
        match (pool, input, picks.pop()) {
            (Some(pool), Input::Tensors(inputs), Some(pick)) => Way::Here(Here {
                pool,
                pick,
                request_id,
                inputs,
                primary,
                primary_latency,
                forced,
            }),
            (_, input, pick) => {
                picks.extend(pick);
                let primary = primary.map_or_else(Primary::Failed, Primary::Outputs);
                Way::Task((snap, picks, back(input, primary)))
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
            let requests = copies.iter().map(|c| c.inputs.clone()).collect();
            let started = Instant::now();
            let answers = pool.run_here(requests);
            let latency = started.elapsed();
            let names = &pool.metadata().outputs;
            for (copy, answer) in copies.into_iter().zip(answers) {
                let shadow = answer.map_err(|e| e.to_string()).map(|outputs| {
                    names
                        .iter()
                        .zip(outputs)
                        .map(|(spec, tensor)| NamedTensor {
                            name: spec.name.clone(),
                            tensor,
                        })
                        .collect()
                });
                self.record(
                    copy.pick,
                    copy.request_id,
                    Arc::new(copy.inputs),
                    copy.primary.map(Arc::new),
                    shadow,
                    copy.primary_latency,
                    latency,
                    copy.forced,
                );
            }
        }
    }
}
