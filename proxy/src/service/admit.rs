//! Step 3 of the flow: who asks. Health and metadata are limited by client address; an
//! inference needs an API key (refused early for an address that keeps failing) and is
//! limited per key and tier, locally or through Redis.

use std::net::IpAddr;

use super::exchange::Exchange;
use super::{Ctx, Gateway};
use crate::config::OnUnavailable;
use crate::errors::{Decision, GatewayError};
use crate::routing::snapshot::Snapshot;

impl Gateway {
    /// The client's address: the connection's peer (or its PROXY header's source), or, from
    /// a trusted proxy, the client it names in `X-Forwarded-For`.
    pub(super) fn client_ip(&self, session: &Exchange<'_>, snap: &Snapshot) -> Option<IpAddr> {
        let peer = session.client_addr()?.as_inet()?.ip();
        let forwarded = session
            .req_header()
            .headers
            .get("x-forwarded-for")
            .map(|v| v.as_bytes());
        Some(snap.config.client_address.client_ip(peer, forwarded))
    }

    pub(super) fn limit_by_ip(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        let Some(ip) = self.client_ip(session, snap) else {
            return Ok(());
        };
        let decision = snap.limiters.check_ip(ip);
        self.limited(ctx, decision, "per_ip")
    }

    /// Records a rate-limit decision; a refusal is counted by tier (never by key or address).
    pub(super) fn limited(&self, ctx: &mut Ctx, decision: Decision, tier: &str) -> Result<(), GatewayError> {
        ctx.rate = Some(decision);
        if decision.allowed {
            Ok(())
        } else {
            self.metrics.rate_limited.with_label_values(&[tier]).inc();
            Err(GatewayError::RateLimited(decision))
        }
    }

    pub(super) async fn authenticate_and_limit(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<(), GatewayError> {
        // An address that keeps failing is refused before its key is looked at.
        let ip = self
            .client_ip(session, snap)
            .map(crate::admission::ratelimit::IpKey::from);
        if let Some(ip) = ip
            && let Some(wait) = snap.limiters.auth_failures.refused(ip)
        {
            self.metrics.auth_failures.with_label_values(&["limited"]).inc();
            return Err(GatewayError::AuthFailuresLimited(wait));
        }
        let found = crate::admission::auth::authenticate(
            &snap.keys,
            &session.req_header().headers,
            ctx.key_memo.as_deref_mut(),
        );
        let key = match found {
            Ok(key) => key,
            Err(e) => {
                let reason = match e {
                    GatewayError::MissingKey => "missing",
                    GatewayError::UnknownKey => "unknown",
                    GatewayError::DisabledKey(_) => "disabled",
                    _ => "other",
                };
                self.metrics.auth_failures.with_label_values(&[reason]).inc();
                // The failure that spends the address's allowance is refused as the next ones are.
                if reason != "other"
                    && let Some(ip) = ip
                    && snap.limiters.auth_failures.failed(ip)
                {
                    let wait = snap.limiters.auth_failures.refused(ip).unwrap_or(1);
                    return Err(GatewayError::AuthFailuresLimited(wait));
                }
                return Err(e);
            }
        };
        let decision = match &snap.shared_limiter {
            None => snap.limiters.check_key(&key.tier, key.digest()),
            Some(shared) => {
                let rate = snap.config.rate_limits.for_tier(&key.tier);
                match shared.check(rate, key.digest()).await {
                    Ok(d) => d,
                    Err(why) => {
                        let policy = shared.settings().on_unavailable;
                        self.metrics
                            .ratelimit_unavailable
                            .with_label_values(&[why.label(), policy.as_str()])
                            .inc();
                        match policy {
                            OnUnavailable::Open => snap.limiters.check_key(&key.tier, key.digest()),
                            OnUnavailable::Closed => {
                                ctx.key = Some(key);
                                return Err(GatewayError::LimiterUnavailable);
                            }
                        }
                    }
                }
            }
        };
        // Counted before the key moves into the context (its tier is the label).
        let refused = self.limited(ctx, decision, &key.tier);
        ctx.key = Some(key);
        refused
    }
}
