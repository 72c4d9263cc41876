//! What `gateway check` and `gateway run` print about a config: routes, weights, stickiness,
//! shadows and pools, one line each.

use super::{Config, OnFailure, PoolSpec, Route, Sticky};

impl Config {
    /// A human summary for `gateway check`: routes, weights, stickiness, shadows, pools.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "listen: https://{} (admin http://{})\n",
            self.https, self.admin
        ));
        out.push_str("routes:\n");
        for route in self.routes.values() {
            let Route {
                index: _,
                model,
                stable,
                canary,
                sticky,
                salt: _,
                shadows,
                cache,
            } = route;
            let pool = |name: &str| {
                self.pools.get(name).map_or_else(
                    || name.to_string(),
                    |p| match p {
                        PoolSpec::Local(l) => format!("{name} (local {}/{})", l.model, l.version),
                        PoolSpec::Http(h) => {
                            let names = h.endpoints.iter().any(crate::config::EndpointSpec::is_name);
                            format!(
                                "{name} ({} {}/{}, {}{})",
                                h.kind(),
                                h.model,
                                h.version,
                                h.endpoints
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                if names {
                                    format!(
                                        "; names looked up every {}",
                                        humantime::format_duration(h.dns_refresh)
                                    )
                                } else {
                                    String::new()
                                }
                            )
                        }
                    },
                )
            };
            let (stable_pct, canary_txt) = match canary {
                Some(c) => (
                    100 - c.weight as u32,
                    format!(
                        ", canary {}% -> {}{}",
                        c.weight,
                        pool(&c.pool),
                        c.rollout.as_ref().map_or(String::new(), |r| format!(
                            " (rollout: weights {} every {}, from the first step; {} on failure)",
                            r.steps.iter().map(u8::to_string).collect::<Vec<_>>().join(" → "),
                            humantime::format_duration(r.interval),
                            match r.on_failure {
                                OnFailure::Rollback => "roll back",
                                OnFailure::Hold => "hold",
                            }
                        ))
                    ),
                ),
                None => (100, String::new()),
            };
            let sticky = match sticky {
                Sticky::None => "per request".to_string(),
                Sticky::ApiKey => "sticky by API key".to_string(),
                Sticky::Header(h) => format!("sticky by header {h}"),
            };
            out.push_str(&format!(
                "  {model}: stable {stable_pct}% -> {}{canary_txt}; {sticky}\n",
                pool(stable)
            ));
            for s in shadows {
                out.push_str(&format!("    shadow {}% -> {}\n", s.percent, pool(&s.pool)));
            }
            if let Some(c) = cache {
                let pools: Vec<String> = c
                    .pool_ttl
                    .iter()
                    .map(|(p, t)| match t.is_zero() {
                        true => format!(", {p} not cached"),
                        false => format!(", {p} {}", humantime::format_duration(*t)),
                    })
                    .collect();
                out.push_str(&format!(
                    "    cache: ttl {}, at most {}{}\n",
                    humantime::format_duration(c.ttl),
                    bytesize::ByteSize::b(c.max_bytes).display().iec(),
                    pools.concat()
                ));
            }
        }
        out
    }
}
