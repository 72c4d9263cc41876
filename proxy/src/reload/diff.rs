//! What a reload changed, for the log line of each reload and `GET /admin/config/diff`:
//! routes added and removed, weights from → to, stable pools, shadows, pools loaded and
//! retired, keys, the certificate, and settings that only a restart applies.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::config::{Config, Route, Sticky};
use crate::routing::snapshot::Snapshot;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Diff {
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Canary weight (0 when the route has no canary) from → to.
    pub weights: Vec<WeightChange>,
    /// Any other change to a surviving route: stable or canary pool, stickiness, shadows.
    pub routes_changed: Vec<String>,
    pub pools_loaded: Vec<String>,
    pub pools_retired: Vec<String>,
    pub keys_added: Vec<String>,
    pub keys_removed: Vec<String>,
    pub keys_disabled: Vec<String>,
    pub keys_enabled: Vec<String>,
    pub certificate_changed: bool,
    /// Other settings that changed and apply now (rate limits, limits, shadow caps, logs).
    pub settings: Vec<String>,
    /// Changed settings that the running process keeps until it restarts.
    pub restart_required: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightChange {
    pub route: String,
    pub from: u8,
    pub to: u8,
}

fn pair<T: fmt::Debug>(what: &'static str, a: &T, b: &T) -> (&'static str, String, String) {
    (what, format!("{a:?}"), format!("{b:?}"))
}

fn weight(r: &Route) -> u8 {
    r.canary.as_ref().map_or(0, |c| c.weight)
}

fn describe_route(r: &Route) -> String {
    let canary = r
        .canary
        .as_ref()
        .map_or_else(|| "no canary".to_string(), |c| format!("canary {}", c.pool));
    let sticky = match &r.sticky {
        Sticky::None => "not sticky".to_string(),
        Sticky::ApiKey => "sticky by API key".to_string(),
        Sticky::Header(h) => format!("sticky by {h}"),
    };
    let shadows: Vec<String> = r
        .shadows
        .iter()
        .map(|s| format!("{}@{}%", s.pool, s.percent))
        .collect();
    format!(
        "stable {}, {canary}, {sticky}, shadows [{}]",
        r.stable,
        shadows.join(", ")
    )
}

impl Diff {
    /// From the snapshot in force to the one replacing it. `running` is the config the
    /// process started with: what a restart would change is compared against it.
    pub fn between(old: &Snapshot, new: &Snapshot, running: &Config, certificate_changed: bool) -> Diff {
        let (o, n) = (&old.config, &new.config);
        let mut d = Diff {
            certificate_changed,
            ..Diff::default()
        };
        for (name, r) in &n.routes {
            match o.routes.get(name) {
                None => d.routes_added.push(name.clone()),
                Some(before) => {
                    if weight(before) != weight(r) {
                        d.weights.push(WeightChange {
                            route: name.clone(),
                            from: weight(before),
                            to: weight(r),
                        });
                    }
                    let (a, b) = (describe_route(before), describe_route(r));
                    if a != b || before.salt != r.salt {
                        let salt = if before.salt != r.salt {
                            " (salt changed: sticky clients are reassigned)"
                        } else {
                            ""
                        };
                        d.routes_changed.push(format!("{name}: {a} -> {b}{salt}"));
                    }
                }
            }
        }
        d.routes_removed = o
            .routes
            .keys()
            .filter(|k| !n.routes.contains_key(*k))
            .cloned()
            .collect();

        let same = |name: &str| match (old.pools.get(name), new.pools.get(name)) {
            (
                Some(crate::routing::snapshot::Backend::Local(a)),
                Some(crate::routing::snapshot::Backend::Local(b)),
            ) => std::sync::Arc::ptr_eq(a, b),
            (
                Some(crate::routing::snapshot::Backend::Remote(a)),
                Some(crate::routing::snapshot::Backend::Remote(b)),
            ) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        };
        d.pools_loaded = new.pools.keys().filter(|k| !same(k)).cloned().collect();
        d.pools_retired = old.pools.keys().filter(|k| !same(k)).cloned().collect();

        let ids = |s: &Snapshot, disabled: Option<bool>| -> BTreeSet<String> {
            s.keys
                .keys()
                .filter(|k| disabled.is_none_or(|want| k.disabled == want))
                .map(|k| k.id.clone())
                .collect()
        };
        let (old_all, new_all) = (ids(old, None), ids(new, None));
        d.keys_added = new_all.difference(&old_all).cloned().collect();
        d.keys_removed = old_all.difference(&new_all).cloned().collect();
        let (old_off, new_off) = (ids(old, Some(true)), ids(new, Some(true)));
        d.keys_disabled = new_off
            .difference(&old_off)
            .filter(|k| old_all.contains(*k))
            .cloned()
            .collect();
        d.keys_enabled = old_off
            .difference(&new_off)
            .filter(|k| new_all.contains(*k))
            .cloned()
            .collect();

        // (only at restart, setting, value, new value): what applies now is compared with
        // the config replaced, what applies at restart with what the process started with.
        let (r, a, b) = (running, &o.shadow, &n.shadow);
        let ra = &running.shadow;
        let entries = [
            (false, pair("rate_limits", &o.rate_limits, &n.rate_limits)),
            (false, pair("limits", &o.limits, &n.limits)),
            (false, pair("listen.admin_hosts", &o.admin_hosts, &n.admin_hosts)),
            (
                false,
                pair("listen (client addresses)", &o.client_address, &n.client_address),
            ),
            (
                false,
                pair(
                    "auth.may_choose_variant",
                    &o.may_choose_variant,
                    &n.may_choose_variant,
                ),
            ),
            (false, pair("server.access_log", &o.access_log, &n.access_log)),
            (
                false,
                pair("shadow.max_in_flight", &a.max_in_flight, &b.max_in_flight),
            ),
            (false, pair("shadow.timeout", &a.timeout, &b.timeout)),
            (
                false,
                pair("shadow.max_body_bytes", &a.max_body_bytes, &b.max_body_bytes),
            ),
            (true, pair("listen.https", &r.https, &n.https)),
            (true, pair("listen.admin", &r.admin, &n.admin)),
            (true, pair("server.threads", &r.threads, &n.threads)),
            (true, pair("server.watch", &r.watch, &n.watch)),
            (true, pair("server.log_format", &r.log_format, &n.log_format)),
            (
                true,
                pair("server.shutdown_grace_s", &r.shutdown_grace, &n.shutdown_grace),
            ),
            (true, pair("shadow.store", &ra.store, &b.store)),
            (
                true,
                pair("shadow.flush_ms", &ra.flush_interval, &b.flush_interval),
            ),
            (
                true,
                pair("shadow.keep_records", &ra.keep_records, &b.keep_records),
            ),
            (true, pair("shadow.keep_hours", &ra.keep_age, &b.keep_age)),
            (
                true,
                pair(
                    "shadow.max_backlog_bytes",
                    &ra.max_backlog_bytes,
                    &b.max_backlog_bytes,
                ),
            ),
            (
                true,
                pair(
                    "limits.idle_timeout_s",
                    &r.limits.idle_timeout,
                    &n.limits.idle_timeout,
                ),
            ),
            (
                true,
                pair(
                    "shadow.sample_agreements",
                    &ra.sample_agreements,
                    &b.sample_agreements,
                ),
            ),
        ];
        for (at_restart, (what, x, y)) in entries {
            if x == y {
                continue;
            }
            if at_restart {
                d.restart_required
                    .push(format!("{what}: running {x}, file says {y}"));
            } else {
                d.settings.push(format!("{what}: {x} -> {y}"));
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }
}

impl fmt::Display for Diff {
    /// One line: `routes added: x; weight iris 10 -> 50; keys disabled: key_1a2b3c4d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        let list = |label: &str, v: &[String], parts: &mut Vec<String>| {
            if !v.is_empty() {
                parts.push(format!("{label}: {}", v.join(", ")));
            }
        };
        list("routes added", &self.routes_added, &mut parts);
        list("routes removed", &self.routes_removed, &mut parts);
        for w in &self.weights {
            parts.push(format!("weight {} {} -> {}", w.route, w.from, w.to));
        }
        list("route changed", &self.routes_changed, &mut parts);
        list("pools loaded", &self.pools_loaded, &mut parts);
        list("pools retired", &self.pools_retired, &mut parts);
        list("keys added", &self.keys_added, &mut parts);
        list("keys removed", &self.keys_removed, &mut parts);
        list("keys disabled", &self.keys_disabled, &mut parts);
        list("keys enabled", &self.keys_enabled, &mut parts);
        if self.certificate_changed {
            parts.push("TLS certificate replaced".into());
        }
        list("settings", &self.settings, &mut parts);
        list("needs a restart", &self.restart_required, &mut parts);
        if parts.is_empty() {
            f.write_str("no change in effect (formatting or comments only)")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}
