//! What one mirrored request leaves behind: the pair of models it was compared under, and
//! the record the store aggregates (every one) and keeps (disagreements, errors, a sample).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inference::NamedTensor;
use serde::Serialize;

use super::compare::Comparison;

/// What a comparison is aggregated under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PairKey {
    pub route: String,
    pub primary_version: String,
    /// The shadow's pool name.
    pub shadow: String,
    pub shadow_version: String,
}

/// One mirrored request, as the shadow task saw it.
pub struct Record {
    pub at: SystemTime,
    pub key: PairKey,
    pub request_id: String,
    pub inputs: Option<Arc<Vec<NamedTensor>>>,
    pub primary: Result<Arc<Vec<NamedTensor>>, String>,
    pub shadow: Result<Vec<NamedTensor>, String>,
    /// Present when both sides answered.
    pub comparison: Option<Comparison>,
    pub primary_latency: Duration,
    pub shadow_latency: Option<Duration>,
}

impl Record {
    /// About what it holds in memory, for the backlog's bound: its tensors, and a little for
    /// everything else.
    pub fn bytes(&self) -> usize {
        let tensors = |t: &[NamedTensor]| -> usize {
            t.iter()
                .map(|n| n.name.len() + n.tensor.data().len() * n.tensor.dtype().size() + 64)
                .sum()
        };
        512 + self.request_id.len()
            + self.inputs.as_deref().map_or(0, |t| tensors(t))
            + self.primary.as_deref().map_or(0, |t| tensors(t))
            + self.shadow.as_deref().map_or(0, tensors)
    }
}
