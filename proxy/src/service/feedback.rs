//! `POST /v2/models/{model}/feedback`: labels for earlier predictions, joined by
//! [`crate::quality`]. A single object is answered with its own status (200 joined, 404
//! unknown, 410 expired, 409 duplicate or ambiguous, 403 another tenant's, 400 not matching,
//! 503 store unavailable); a list with 200 and one result per item.

use std::sync::Arc;

use bytes::Bytes;
use inference::InferError;

use super::exchange::Exchange;
use super::{Ctx, Gateway};
use crate::config::Variant;
use crate::errors::GatewayError;
use crate::quality::feedback::{self, Answer};
use crate::routing::snapshot::Snapshot;

impl Gateway {
    pub(super) async fn answer_feedback(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        model: &str,
    ) -> Result<(), GatewayError> {
        let route = snap
            .route(model)
            .ok_or_else(|| InferError::NotFound(format!("unknown model {model:?}")))?;
        ctx.route = Some(route.model.clone());
        if !self.quality.feedback_enabled() {
            return Err(InferError::NotFound(
                "feedback is off on this gateway (quality.feedback.enabled: false)".into(),
            )
            .into());
        }
        let limits = &snap.config.limits;
        let caps = crate::admission::budget::Caps::of(limits);
        let mut held = self.hold(ctx);
        let body = session.read_body(limits.max_body_bytes, &mut held, caps).await?;
        let (items, single) = feedback::parse(&body).map_err(InferError::BadRequest)?;
        drop(body);
        let tenant = ctx.key.as_ref().map_or("", |k| k.tenant.as_str()).to_string();
        let (outcomes, joined) = self.quality.join(&tenant, &route.model, &items).await;
        for j in joined.iter().filter(|j| !j.served.forced) {
            let variant = if j.served.variant == "canary" {
                Variant::Canary
            } else {
                Variant::Stable
            };
            self.rollouts.observe_labels(
                &route.model,
                variant,
                j.correct as u64,
                j.served.classes.len() as u64,
            );
        }
        let answer = Answer::of(&items, &outcomes);
        let status = if single { outcomes[0].status() } else { 200 };
        let mut json = serde_json::to_value(&answer).expect("serializable");
        if single && status != 200 {
            // The same shape as every other error, with the counts beside it.
            json["error"] = serde_json::Value::String(outcomes[0].message(&items[0].request_id));
        }
        drop(held);
        self.respond(
            session,
            ctx,
            status,
            "application/json",
            Bytes::from(json.to_string()),
            &[],
        )
        .await;
        Ok(())
    }
}
