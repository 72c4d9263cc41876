//! Step 4 of the flow: which variant answers (`x-canary` or a versioned path for keys allowed
//! to choose, then the split), and stable when the canary the weight chose cannot serve.

use inference::InferError;
use inference::protocol::ModelRef;

use super::exchange::Exchange;
use super::{Ctx, Gateway, Kind};
use crate::config::{Route, Variant};
use crate::errors::GatewayError;
use crate::http::names::X_CANARY;
use crate::routing::snapshot::{Backend, Snapshot};
use crate::routing::split;

impl Gateway {
    /// The variant that answers. A versioned path pins the variant serving that version;
    /// otherwise `x-canary`, then stickiness, then the weight ([`split::choose`]). Choosing
    /// (a versioned inference, or `x-canary`) is for keys that `auth.may_choose_variant`
    /// allows: another key's `x-canary` is ignored (and counted), its versioned inference
    /// refused with 403.
    pub(super) fn choose_variant(
        &self,
        session: &Exchange<'_>,
        ctx: &mut Ctx,
        snap: &Snapshot,
        route: &Route,
        kind: Kind,
        model_ref: ModelRef<'_>,
    ) -> Result<Variant, GatewayError> {
        let may_choose = ctx
            .key
            .as_ref()
            .is_some_and(|k| snap.config.may_choose_variant.allows(k));
        if let Some(v) = model_ref.version {
            if matches!(kind, Kind::Infer | Kind::Simple) {
                if !may_choose {
                    return Err(GatewayError::VariantChoiceNotAllowed {
                        model: route.model.clone(),
                    });
                }
                ctx.forced = true;
            }
            return variant_for_version(route, snap, v);
        }
        let headers = &session.req_header().headers;
        let sticky_header = match &route.sticky {
            crate::config::Sticky::Header(h) => headers.get(h.as_str()).map(|v| v.as_bytes()),
            _ => None,
        };
        let x_canary = headers.get(X_CANARY).map(|v| v.as_bytes());
        let x_canary = match x_canary {
            Some(_) if ctx.key.is_some() && !may_choose => {
                self.metrics
                    .variant_choice_ignored
                    .with_label_values(&[route.model.as_str()])
                    .inc();
                None
            }
            other => other,
        };
        ctx.forced = x_canary.is_some();
        let request = split::Request {
            x_canary,
            key_digest: ctx.key.as_ref().map(|k| k.digest()),
            sticky_header,
        };
        let chosen = split::choose(route, &request, split::random_bucket)?;
        // The weight (not a tester's x-canary) picked a canary that cannot serve: stable
        // answers instead, and it is said.
        Ok(if chosen == Variant::Canary && request.x_canary.is_none() {
            self.fall_back_if_not_ready(snap, route)
        } else {
            chosen
        })
    }

    /// Stable, when the canary the weight chose cannot serve (a local model failing every
    /// run, a remote pool without a healthy endpoint); counted, and logged at most every 10 s.
    pub(super) fn fall_back_if_not_ready(&self, snap: &Snapshot, route: &Route) -> Variant {
        let Some(canary) = &route.canary else {
            return Variant::Stable;
        };
        if snap.pools.get(&canary.pool).is_none_or(Backend::ready) {
            return Variant::Canary;
        }
        self.metrics
            .canary_fallback
            .with_label_values(&[route.model.as_str()])
            .inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.fallback_logged.load(std::sync::atomic::Ordering::Relaxed);
        if now >= last + 10
            && self
                .fallback_logged
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                route = %route.model,
                canary = %canary.pool,
                "canary pool not ready: its share of traffic goes to stable (gateway_canary_fallback_total)"
            );
        }
        Variant::Stable
    }
}

/// A versioned path pins the variant whose pool serves that version.
pub(super) fn variant_for_version(
    route: &Route,
    snap: &Snapshot,
    version: &str,
) -> Result<Variant, GatewayError> {
    // The path's version as a number, when written as one would write it ("7", not "07").
    let asked = (version == "0" || !version.starts_with('0'))
        .then(|| version.parse::<u64>().ok())
        .flatten()
        .filter(|_| version.bytes().all(|b| b.is_ascii_digit()));
    let serves = |pool: &str| asked.is_some() && snap.config.pools.get(pool).map(|p| p.version()) == asked;
    if serves(&route.stable) {
        return Ok(Variant::Stable);
    }
    if let Some(c) = &route.canary
        && serves(&c.pool)
    {
        return Ok(Variant::Canary);
    }
    Err(InferError::NotFound(format!(
        "unknown version {version:?} of model {:?} (available: {})",
        route.model,
        route_versions(route, snap).join(", ")
    ))
    .into())
}

/// The versions a route serves (stable first).
pub(crate) fn route_versions(route: &Route, snap: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once(&route.stable)
        .chain(route.canary.iter().map(|c| &c.pool))
        .filter_map(|p| snap.config.pools.get(p).map(|s| s.version().to_string()))
        .collect();
    v.dedup();
    v
}
