//! Every answer leaves through here, success or error, with the gateway's headers; a refusal
//! sent before the body was read keeps the connection only when that is safe.

use bytes::Bytes;
use inference::InferError;

use super::exchange::{Exchange, Head, drain_small_body, linger};
use super::{Ctx, Gateway};
use crate::errors::GatewayError;
use crate::routing::snapshot::Snapshot;

impl Gateway {
    /// Health and server metadata: no key, limited per client IP.
    pub(super) async fn keyless(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
        body: String,
    ) -> Result<(), GatewayError> {
        self.limit_by_ip(session, ctx, snap)?;
        self.respond_json(session, ctx, body).await;
        Ok(())
    }

    /// 200 with a JSON body.
    pub(super) async fn respond_json(&self, session: &mut Exchange<'_>, ctx: &mut Ctx, body: String) {
        self.respond(session, ctx, 200, "application/json", Bytes::from(body), &[])
            .await;
    }

    /// Writes a complete response with the gateway's headers.
    pub(super) async fn respond(
        &self,
        session: &mut Exchange<'_>,
        ctx: &mut Ctx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&'static str, String)],
    ) {
        ctx.status = status;
        // A response sent before the request body was read (a refusal) leaves bytes on the
        // connection that would be parsed as the next request: read a small declared body
        // first, so that the client keeps its connection (a refused client would otherwise
        // pay a new TLS handshake per request); close the connection in any other case.
        let closing = session.body_failed() || (!session.is_body_done() && !drain_small_body(session).await);
        if closing {
            session.close_after();
        }
        let head = Head {
            content_type,
            length: body.len(),
            ctx,
            extra,
        };
        if session.write_response(status, &head, body).await.is_ok() && closing {
            linger(session).await;
        }
    }

    pub(super) async fn respond_error(&self, session: &mut Exchange<'_>, ctx: &mut Ctx, e: GatewayError) {
        if matches!(e, GatewayError::HeadersTooLarge { .. }) {
            // A client that sends more header than allowed is not kept.
            session.close_after();
        }
        if matches!(e, GatewayError::Infer(InferError::BodyTimeout { .. })) {
            self.metrics
                .connection_timeouts
                .with_label_values(&["body"])
                .inc();
        }
        let mut extra = e.headers();
        if let Some(after) = e.retry_after() {
            extra.push(("retry-after", after.as_secs().max(1).to_string()));
        }
        let status = e.status();
        let body = Bytes::from(e.body());
        ctx.error = Some(e);
        self.respond(session, ctx, status, "application/json", body, &extra)
            .await;
    }
}
