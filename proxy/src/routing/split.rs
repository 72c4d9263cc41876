//! Which variant of a route answers a request.
//!
//! Order of decision: the `x-canary` header (`true` → canary, `false` → stable); then
//! stickiness; then the weight. Sticky assignment hashes the client's identity (its API key,
//! or a configured header) with the route's salt into 10,000 buckets and sends bucket
//! `< weight × 100` to the canary. A client therefore keeps its variant from request to
//! request, and raising the weight only moves clients from stable to canary: a bucket below
//! the old threshold is below the new one too.

use crate::config::Variant;
use crate::config::{Route, Sticky};
use crate::errors::GatewayError;

pub const BUCKETS: u32 = 10_000;

/// What the router knows about a request.
pub struct Request<'a> {
    /// The raw `x-canary` header, if sent.
    pub x_canary: Option<&'a [u8]>,
    /// The digest of the caller's API key (requests that reach a route are authenticated).
    pub key_digest: Option<&'a [u8; 32]>,
    /// The value of the route's sticky header, if it has one and the request sent it.
    pub sticky_header: Option<&'a [u8]>,
}

/// The bucket (0..10,000) of an identity under a route's salt.
///
/// XXH3 is specified and versioned independently of this program, so a client's bucket does
/// not change when the gateway is upgraded (which a hasher such as std's SipHash-with-
/// unspecified-keys would not promise); it is also fast enough for every request.
pub fn bucket(salt: &str, identity: &[u8]) -> u32 {
    let seed = xxhash_rust::xxh3::xxh3_64(salt.as_bytes());
    (xxhash_rust::xxh3::xxh3_64_with_seed(identity, seed) % BUCKETS as u64) as u32
}

/// Decides the variant. `random_bucket` draws a uniform bucket for requests that are not
/// sticky; it is a parameter so that tests can drive it.
pub fn choose(
    route: &Route,
    req: &Request<'_>,
    random_bucket: impl FnOnce() -> u32,
) -> Result<Variant, GatewayError> {
    if let Some(raw) = req.x_canary {
        let wants_canary = if raw.eq_ignore_ascii_case(b"true") {
            true
        } else if raw.eq_ignore_ascii_case(b"false") {
            false
        } else {
            return Err(GatewayError::BadHeader(format!(
                "x-canary must be \"true\" or \"false\", got {:?}",
                String::from_utf8_lossy(raw)
            )));
        };
        if !wants_canary {
            return Ok(Variant::Stable);
        }
        if route.canary.is_none() {
            return Err(GatewayError::BadHeader(format!(
                "x-canary: true, but model {:?} has no canary",
                route.model
            )));
        }
        return Ok(Variant::Canary);
    }
    let Some(canary) = &route.canary else {
        return Ok(Variant::Stable);
    };
    let identity: Option<&[u8]> = match &route.sticky {
        Sticky::None => None,
        Sticky::ApiKey => req.key_digest.map(|d| d.as_slice()),
        Sticky::Header(_) => req.sticky_header,
    };
    let b = match identity {
        Some(id) => bucket(&route.salt, id),
        None => random_bucket() % BUCKETS,
    };
    Ok(if b < canary.weight as u32 * 100 {
        Variant::Canary
    } else {
        Variant::Stable
    })
}

/// A uniform bucket from the thread's random generator.
pub fn random_bucket() -> u32 {
    rand::random_range(0..BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Canary;

    fn route(weight: Option<u8>, sticky: Sticky) -> Route {
        Route {
            index: 0,
            model: "m".into(),
            stable: "s".into(),
            canary: weight.map(|w| Canary {
                pool: "c".into(),
                weight: w,
                configured_weight: w,
                rollout: None,
            }),
            sticky,
            salt: "m".into(),
            shadows: vec![],
            cache: None,
        }
    }

    fn req<'a>(x: Option<&'a [u8]>, key: Option<&'a [u8; 32]>) -> Request<'a> {
        Request {
            x_canary: x,
            key_digest: key,
            sticky_header: None,
        }
    }

    #[test]
    fn x_canary_decides_first() {
        let r = route(Some(0), Sticky::ApiKey);
        assert_eq!(
            choose(&r, &req(Some(b"true"), None), || 0).unwrap(),
            Variant::Canary
        );
        assert_eq!(
            choose(&r, &req(Some(b"TRUE"), None), || 0).unwrap(),
            Variant::Canary
        );
        let all_canary = route(Some(100), Sticky::None);
        assert_eq!(
            choose(&all_canary, &req(Some(b"false"), None), || 0).unwrap(),
            Variant::Stable
        );
        let err = choose(&r, &req(Some(b"yes"), None), || 0).unwrap_err();
        assert_eq!(err.status(), 400);
        let no_canary = route(None, Sticky::None);
        let err = choose(&no_canary, &req(Some(b"true"), None), || 0).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("has no canary"), "{err}");
        assert_eq!(
            choose(&no_canary, &req(Some(b"false"), None), || 0).unwrap(),
            Variant::Stable
        );
    }

    /// 100,000 requests at weight 10 through the router: 10% ± 0.5 pp go to the canary,
    /// both for per-request splitting and for sticky splitting over distinct clients.
    #[test]
    fn weight_10_gives_10_percent() {
        let per_request = route(Some(10), Sticky::None);
        let n = 100_000;
        let canary = (0..n)
            .filter(|_| choose(&per_request, &req(None, None), random_bucket).unwrap() == Variant::Canary)
            .count();
        let share = canary as f64 / n as f64 * 100.0;
        assert!(
            (share - 10.0).abs() <= 0.5,
            "per-request canary share {share:.2}%"
        );

        let sticky = route(Some(10), Sticky::ApiKey);
        let canary = (0..n as u32)
            .filter(|i| {
                let key = crate::config::keys::digest(&format!("client-{i}"));
                choose(&sticky, &req(None, Some(&key)), || unreachable!()).unwrap() == Variant::Canary
            })
            .count();
        let share = canary as f64 / n as f64 * 100.0;
        assert!((share - 10.0).abs() <= 0.5, "sticky canary share {share:.2}%");
    }

    #[test]
    fn sticky_clients_keep_their_variant_and_only_move_towards_canary() {
        let clients: Vec<[u8; 32]> = (0..5_000)
            .map(|i| crate::config::keys::digest(&format!("k{i}")))
            .collect();
        let variants = |weight: u8| -> Vec<Variant> {
            let r = route(Some(weight), Sticky::ApiKey);
            clients
                .iter()
                .map(|k| choose(&r, &req(None, Some(k)), || unreachable!()).unwrap())
                .collect()
        };
        let mut previous = variants(0);
        assert!(previous.iter().all(|v| *v == Variant::Stable));
        assert_eq!(
            variants(5),
            variants(5),
            "the same client gets the same variant every time"
        );
        for weight in [5, 25, 50, 100] {
            let now = variants(weight);
            for (before, after) in previous.iter().zip(&now) {
                assert!(
                    !(*before == Variant::Canary && *after == Variant::Stable),
                    "weight {weight} moved a client back"
                );
            }
            previous = now;
        }
        assert!(previous.iter().all(|v| *v == Variant::Canary));
    }

    #[test]
    fn salt_reshuffles_and_header_stickiness_works() {
        let a = bucket("one", b"client");
        assert_eq!(a, bucket("one", b"client"));
        let moved = (0..1000)
            .filter(|i| {
                bucket("one", format!("c{i}").as_bytes()) != bucket("two", format!("c{i}").as_bytes())
            })
            .count();
        assert!(
            moved > 900,
            "a new salt reshuffles clients ({moved} of 1000 moved)"
        );
        let r = route(Some(50), Sticky::Header("x-user-id".into()));
        let with = |id: &'static [u8]| Request {
            x_canary: None,
            key_digest: None,
            sticky_header: Some(id),
        };
        let v = choose(&r, &with(b"user-42"), || unreachable!()).unwrap();
        assert_eq!(choose(&r, &with(b"user-42"), || unreachable!()).unwrap(), v);
        // Without the header: split per request.
        assert_eq!(choose(&r, &req(None, None), || 0).unwrap(), Variant::Canary);
        assert_eq!(choose(&r, &req(None, None), || 9_999).unwrap(), Variant::Stable);
    }
}
