//! A REST request body seen before, answered as it was written ([`crate::cache::Answered`]):
//! no tensors decoded, no outputs encoded, only the request's own id written in. Only on a
//! route without shadows (they need the request's tensors). Such a hit still counts in the
//! cache's and the request's metrics, and still feeds the drift window (the first input's
//! rows are kept with the answer), the prediction metrics and feedback. A body is kept from
//! a hit only ([`Gateway::keep_seen`]): a miss does no more work than without this.
//!
//! Why: decoding the JSON body and encoding the answer were 5.4% and 2.3% of a hit's
//! samples at 2,000 requests/s (a one-off `perf` of the I/O thread, docs/performance.md),
//! and the hit's share of a miss's CPU is a target of `loadtests/bench_cache.sh`.

use bytes::Bytes;
use inference::{InferError, ModelMetadata, NamedTensor, Tensor};

use super::{Ctx, Gateway};
use crate::cache::{Answered, Key, RouteCache};
use crate::config::Route;
use crate::errors::GatewayError;
use crate::routing::snapshot::Snapshot;

/// A cache hit on a route without shadows: when its answer was stored, and the request's
/// inputs (the pool did not take them; the first one's rows go to the drift window of
/// later hits).
pub(super) struct Seen {
    pub(super) stored_ms: u64,
    pub(super) inputs: Vec<NamedTensor>,
}

/// The route's cache, the pool that answers and the body's key, when that pool's answers
/// are cached and the route has no shadows (they need the tensors).
fn body_cache<'s>(
    snap: &'s Snapshot,
    ctx: &Ctx,
    route: &'s Route,
    body: &[u8],
    header_length: Option<&str>,
) -> Option<(&'s RouteCache, &'s str, Key)> {
    if !route.shadows.is_empty() {
        return None;
    }
    let served = route.pool(ctx.variant?);
    let c = snap.caches.get(&route.model).filter(|c| c.caches(served))?;
    let version = ctx.model_version.as_deref().unwrap_or_default();
    Some((c, served, c.body_key(served, version, header_length, body)))
}

impl Gateway {
    /// The answer kept for exactly this body (and `Inference-Header-Content-Length`), with
    /// this request's id written in, when there is one. Too large with this id (a long
    /// `x-request-id`): 413, as encoding it would be.
    pub(super) fn answer_seen(
        &self,
        snap: &Snapshot,
        ctx: &mut Ctx,
        route: &Route,
        body: &[u8],
        header_length: Option<&str>,
    ) -> Option<Result<(Bytes, Option<usize>), GatewayError>> {
        let (c, _, key) = body_cache(snap, ctx, route, body, header_length)?;
        let answered = c.answered(&key)?;
        ctx.cache = Some("hit");
        let (answer, json_len) = answered.for_request(&ctx.request_id);
        let limit = snap.config.limits.max_answer_bytes;
        if answer.len() > limit {
            return Some(Err(InferError::AnswerTooLarge { limit }.into()));
        }
        if let (Some(w), Some((row_len, rows))) = (&ctx.drift, &answered.rows) {
            self.quality.record_rows(w, *row_len, rows);
        }
        self.record_predictions(ctx, &route.model, answered.predictions.clone());
        Some(Ok((answer, json_len)))
    }

    /// Keeps the answer just written for this body, when it was a hit: bodies are kept
    /// only once seen again (a miss does no more work than without them, and inputs that
    /// never come back cost nothing more). `id_given`: the request body named the answer's
    /// id (then it is the same for the same body; otherwise it is the gateway's request id,
    /// rewritten per hit).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn keep_seen(
        &self,
        snap: &Snapshot,
        ctx: &mut Ctx,
        route: &Route,
        (body, header_length): (&[u8], Option<&str>),
        (answer, json_len): (&Bytes, Option<usize>),
        (id, id_given): (&str, bool),
        (meta, outputs): (&ModelMetadata, &[Tensor]),
    ) {
        let Some(Seen { stored_ms, inputs }) = ctx.seen.take() else {
            return;
        };
        let Some((c, served, key)) = body_cache(snap, ctx, route, body, header_length) else {
            return;
        };
        let version = ctx.model_version.as_deref().unwrap_or_default();
        let id_at = match id_given {
            true => None,
            false => match locate_id(answer, &route.model, &meta.version, id) {
                Some(at) => Some(at),
                None => {
                    debug_assert!(false, "the answer's id is where the codec writes it");
                    return;
                }
            },
        };
        let named: Vec<(&str, &Tensor)> = meta
            .outputs
            .iter()
            .map(|spec| spec.name.as_str())
            .zip(outputs)
            .collect();
        let answered = Answered {
            body: answer.clone(),
            json_len,
            id_at,
            predictions: crate::predictions::predictions(&named),
            rows: crate::quality::Quality::rows_of(&inputs),
        };
        c.keep_answered(key, served, version, stored_ms, answered);
    }
}

/// Where `id` (as a JSON string) lies in an answer the codec wrote: after the model's name
/// and version (`inference::protocol::encode_response`'s field order).
fn locate_id(answer: &[u8], model: &str, version: &str, id: &str) -> Option<std::ops::Range<usize>> {
    let json = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    let head = format!(
        "{{\"model_name\":{},\"model_version\":{},\"id\":",
        json(model),
        json(version)
    );
    let id = json(id);
    let start = head.len();
    (answer.starts_with(head.as_bytes()) && answer[start..].starts_with(id.as_bytes()))
        .then(|| start..start + id.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::protocol;
    use inference::tensor::TensorData;

    #[test]
    fn an_answer_rewritten_for_another_id_is_the_codec_s_answer_for_it() {
        let meta = ModelMetadata {
            name: "m".into(),
            version: "7".into(),
            platform: "test",
            inputs: vec![],
            outputs: ["label", "probabilities"]
                .iter()
                .map(|n| inference::TensorSpec {
                    name: n.to_string(),
                    datatype: inference::DataType::F32,
                    shape: vec![-1],
                })
                .collect(),
            batchable: true,
        };
        let outputs = vec![
            Tensor::new(vec![1], TensorData::I64(vec![2])).unwrap(),
            Tensor::new(vec![1, 3], TensorData::F32(vec![0.25, 0.5, 0.25])).unwrap(),
        ];
        // JSON outputs, and the second output as binary data (then a JSON length).
        for selected in [vec![(0, false), (1, false)], vec![(0, false), (1, true)]] {
            let encode = |id: &str| {
                protocol::encode_response(&meta, "route \"r\"", "7", id, &selected, &outputs, 1 << 20)
                    .unwrap()
            };
            let first = encode("0123456789abcdef");
            let at = locate_id(&first.body, "route \"r\"", "7", "0123456789abcdef").expect("found");
            let kept = Answered {
                body: Bytes::from(first.body.clone()),
                json_len: first.json_len,
                id_at: Some(at),
                predictions: vec![],
                rows: None,
            };
            for id in ["fedcba9876543210", "a", "an \"id\" with\\escapes\u{1}", ""] {
                let again = encode(id);
                let (body, json_len) = kept.for_request(id);
                assert_eq!(&body[..], &again.body[..], "{id:?}");
                assert_eq!(json_len, again.json_len, "{id:?}");
            }
            // An id the answer does not carry where the codec writes it: not found.
            assert_eq!(locate_id(&first.body, "route \"r\"", "7", "another"), None);
            assert_eq!(locate_id(&first.body, "r", "7", "0123456789abcdef"), None);
        }
    }
}
