//! Table tests over bad configs: every problem is reported, each with its line and column.

use std::path::PathBuf;

use rstest::rstest;

use super::*;

fn models() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .display()
        .to_string()
}

/// A valid config; each case below breaks one thing in it (the rollout tests build on it too).
pub(crate) fn base() -> String {
    format!(
        "tls: {{cert: nowhere/server.crt, key: nowhere/server.key, generate_dev_cert: true}}
auth: {{keys_file: nowhere/keys.yaml, create_dev_key: true}}
models_dir: {}
pools:
  a: {{local: {{model: breast-cancer, version: 1}}}}
  b: {{local: {{model: breast-cancer, version: 2}}}}
routes:
  - model: m
    stable: a
    canary: {{pool: b, weight: 10}}
    shadows: [{{pool: b, percent: 50}}]
",
        models()
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    parse(&PathBuf::from("t.yaml"), text).err().unwrap_or_default()
}

#[test]
fn the_base_config_is_valid() {
    let config = parse(&PathBuf::from("t.yaml"), &base()).unwrap();
    let route = &config.routes["m"];
    assert_eq!(route.canary.as_ref().unwrap().weight, 10);
    assert_eq!(route.salt, "m");
    assert_eq!(config.https.port(), 8443);
    assert!(
        config
            .summary()
            .contains("canary 10% -> b (local breast-cancer/2)"),
        "{}",
        config.summary()
    );
}

#[rstest]
#[case::weight_over_100(
    "weight: 10",
    "weight: 150",
    10,
    31,
    "routes[0].canary.weight: must be between 0 and 100, got 150"
)]
#[case::negative_percent(
    "percent: 50",
    "percent: -1",
    11,
    34,
    "routes[0].shadows[0].percent: must be between 0 and 100, got -1"
)]
#[case::unknown_stable(
    "stable: a",
    "stable: zz",
    9,
    13,
    "routes[0].stable: no pool named \"zz\" (pools: a, b)"
)]
#[case::unknown_canary(
    "pool: b, weight",
    "pool: q, weight",
    10,
    20,
    "routes[0].canary.pool: no pool named \"q\""
)]
#[case::canary_is_stable(
    "pool: b, weight",
    "pool: a, weight",
    10,
    20,
    "the canary pool is the stable pool"
)]
#[case::missing_model_file("version: 2}", "version: 9}", 6, 22, "pools.b.local.model: no model file")]
#[case::bad_version(
    "version: 1}",
    "version: 0}",
    5,
    46,
    "pools.a.local.version: must be between 1 and"
)]
#[case::bad_sticky(
    "    shadows",
    "    sticky: sometimes\n    shadows",
    11,
    13,
    "routes[0].sticky: \"sometimes\" is not one of"
)]
#[case::bad_listen(
    "tls:",
    "listen: {https: \"nope\"}\ntls:",
    1,
    17,
    "listen.https: \"nope\" is not an address"
)]
#[case::bad_redis_url(
    "pools:",
    "rate_limits: {redis: {url: \"http://x\"}}\npools:",
    4,
    28,
    "rate_limits.redis.url: not a Redis URL"
)]
#[case::bad_redis_timeout(
    "pools:",
    "rate_limits: {redis: {url: \"redis://x\", timeout_ms: 0}}\npools:",
    4,
    53,
    "rate_limits.redis.timeout_ms: must be between 1 and 10000"
)]
#[case::bad_local_copies(
    "pools:",
    "shadow: {local_copies: sometimes}\npools:",
    4,
    24,
    "shadow.local_copies: \"sometimes\" is not one of: auto, io_threads, shadow_thread"
)]
#[case::bad_max_queued(
    "pools:",
    "shadow: {max_queued: 0}\npools:",
    4,
    22,
    "shadow.max_queued: must be between 1 and 65536, got 0"
)]
fn one_problem_located(
    #[case] from: &str,
    #[case] to: &str,
    #[case] line: usize,
    #[case] column: usize,
    #[case] message: &str,
) {
    let text = base().replacen(from, to, 1);
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    let shown = e.to_string();
    assert!(shown.contains(message), "{shown} should contain {message}");
    assert_eq!((e.line, e.column), (Some(line), Some(column)), "{shown}");
    assert!(shown.starts_with(&format!("t.yaml:{line}:{column}: ")), "{shown}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = base()
        .replace("weight: 10", "weight: 101")
        .replace("percent: 50", "percent: 500")
        .replace("stable: a", "stable: nope");
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:?}");
}

#[rstest]
#[case::unknown_field("    stable: a", "    stable: a\n    wieght: 5", "unknown field `wieght`")]
#[case::wrong_type("weight: 10", "weight: lots", "invalid type")]
#[case::syntax("routes:", "routes: [", "")]
#[case::both_pool_kinds(
    "a: {local",
    "a: {http: {endpoints: [], model: x, version: 1}, local",
    "exactly one of `local`, `http` or `grpc`"
)]
#[case::bad_redis_policy(
    "pools:",
    "rate_limits: {redis: {url: \"redis://x\", on_unavailable: maybe}}\npools:",
    "unknown variant `maybe`, expected `open` or `closed`"
)]
fn parse_errors_have_a_position(#[case] from: &str, #[case] to: &str, #[case] message: &str) {
    let errs = errors(&base().replacen(from, to, 1));
    assert!(!errs.is_empty());
    assert!(errs[0].to_string().contains(message), "{}", errs[0]);
    assert!(errs[0].line.is_some(), "{}", errs[0]);
}

#[test]
fn missing_files_are_errors_unless_they_will_be_made() {
    let text = base()
        .replace(", generate_dev_cert: true", "")
        .replace(", create_dev_key: true", "");
    let errs = errors(&text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("do not exist (set generate_dev_cert: true")),
        "{shown:?}"
    );
    assert!(shown.iter().any(|e| e.contains("gateway keys add")), "{shown:?}");
}

#[test]
fn http_pools_are_checked() {
    let text = base().replace(
        "  b: {local: {model: breast-cancer, version: 2}}",
        "  b: {http: {endpoints: [\"not an address\"], model: breast-cancer, version: 2, timeout_ms: 0, health_check: {path: ready}}}",
    );
    let shown: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.http.endpoints[0]: \"not an address\" is not host:port")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.http.timeout_ms: must be between 1")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.http.health_check.path: must start with '/'")),
        "{shown:?}"
    );
}

#[test]
fn endpoints_are_addresses_or_names_and_a_name_need_not_resolve_here() {
    use crate::config::EndpointSpec::{self, Address, Name};
    let name = |h: &str, port| Some(Name { host: h.into(), port });
    assert_eq!(
        EndpointSpec::parse("10.0.0.7:8000"),
        Some(Address("10.0.0.7:8000".parse().unwrap()))
    );
    assert_eq!(
        EndpointSpec::parse("[::1]:8001"),
        Some(Address("[::1]:8001".parse().unwrap()))
    );
    assert_eq!(
        EndpointSpec::parse("models.ml.svc.cluster.local:8000"),
        name("models.ml.svc.cluster.local", 8000)
    );
    assert_eq!(EndpointSpec::parse("localhost:1"), name("localhost", 1));
    for bad in [
        "models",
        "models:0",
        "models:65536",
        "models:x",
        "bad host:80",
        ":80",
        "a..b:80",
        "::1:80x",
    ] {
        assert_eq!(EndpointSpec::parse(bad), None, "{bad}");
    }
    // In-cluster names do not resolve on a laptop: not an error (the pool looks again).
    let text = base().replace(
        "  b: {local: {model: breast-cancer, version: 2}}",
        "  b: {http: {endpoints: [\"no-such-host.invalid:8000\"], model: breast-cancer, version: 2, dns_refresh_ms: 250}}",
    );
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
    let text = text.replace("dns_refresh_ms: 250", "dns_refresh_ms: 10");
    let shown: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.http.dns_refresh_ms: must be between 100")),
        "{shown:?}"
    );
}

#[test]
fn grpc_pools_are_checked_as_http_pools_and_take_no_health_path() {
    let text = base().replace(
        "  b: {local: {model: breast-cancer, version: 2}}",
        "  b: {grpc: {endpoints: [\"127.0.0.1:8001\"], model: breast-cancer, version: 2, timeout_ms: 0, health_check: {path: /ready}}}",
    );
    let shown: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.grpc.timeout_ms: must be between 1")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b.grpc.health_check.path: a grpc pool's health check asks ModelReady")),
        "{shown:?}"
    );
    let both = base().replace(
        "  b: {local: {model: breast-cancer, version: 2}}",
        "  b: {local: {model: breast-cancer, version: 2}, grpc: {endpoints: [\"127.0.0.1:8001\"], model: m, version: 1}}",
    );
    let shown: Vec<String> = errors(&both).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("pools.b: must have exactly one of `local`, `http` or `grpc`")),
        "{shown:?}"
    );
}

#[test]
fn the_shipped_routes_yaml_is_valid() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../routes.yaml");
    let config = load(&file).unwrap_or_else(|e| panic!("{e:?}"));
    let cancer = &config.routes["breast-cancer"];
    assert_eq!(cancer.canary.as_ref().map(|c| c.weight), Some(10));
    assert_eq!(cancer.sticky, Sticky::ApiKey);
    assert_eq!(cancer.shadows.len(), 1);
    assert!(config.routes["digits"].canary.is_none());
    assert_eq!(
        (config.https.port(), config.admin.to_string().as_str()),
        (8443, "127.0.0.1:9901")
    );
}

#[test]
fn redis_passwords_are_never_shown() {
    let text = base().replacen(
        "pools:",
        "rate_limits: {redis: {url: \"redis://app:s3cret@cache:6379/2\", on_unavailable: closed}}\npools:",
        1,
    );
    let config = parse(&PathBuf::from("t.yaml"), &text).unwrap();
    let redis = config.rate_limits.redis.unwrap();
    assert_eq!(redis.on_unavailable, OnUnavailable::Closed);
    assert_eq!(redis.url_redacted(), "redis://app:***@cache:6379/2");
    assert!(!format!("{redis:?}").contains("s3cret"));
    assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
    assert_eq!(redact_url("rediss://:pw@cache/0"), "rediss://:***@cache/0");
}

#[test]
fn every_missing_section_is_named_at_once() {
    // A file written from scratch: three required sections absent, one error naming them all.
    let e = errors("routes:\n  - model: x\n    stable: nope\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].message
            .starts_with("missing fields `tls`, `auth`, `pools`: "),
        "{}",
        e[0].message
    );
    assert_eq!((e[0].line, e[0].column), (Some(1), Some(1)));
    // One absent: the decoder's own message, as before.
    let without_pools: String = base()
        .lines()
        .filter(|l| !l.starts_with("pools:") && !l.starts_with("  a:") && !l.starts_with("  b:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = errors(&without_pools);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].message.contains("missing field `pools`"), "{}", e[0].message);
}
