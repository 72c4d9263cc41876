use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use inference::tensor::TensorData;
use inference::{NamedTensor, Tensor};

use super::*;
use crate::quality::FakeWallClock;

fn spec(ttl_s: u64, max_bytes: u64) -> CacheSpec {
    CacheSpec {
        ttl: Duration::from_secs(ttl_s),
        max_bytes,
        pool_ttl: BTreeMap::new(),
    }
}

fn row(x: f32) -> Vec<NamedTensor> {
    vec![NamedTensor {
        name: "x".into(),
        tensor: Tensor::new(vec![1, 2], TensorData::F32(vec![x, 1.0])).unwrap(),
    }]
}

fn answer(class: i64) -> Vec<Tensor> {
    vec![Tensor::new(vec![1], TensorData::I64(vec![class])).unwrap()]
}

fn get(c: &RouteCache, k: &Key) -> Option<Vec<Tensor>> {
    c.get(k).map(|f| f.outputs)
}

fn cache(spec: CacheSpec) -> (RouteCache, Arc<FakeWallClock>) {
    let clock = Arc::new(FakeWallClock::default());
    clock.0.store(1_000_000, Ordering::Relaxed);
    (RouteCache::new(spec, clock.clone()), clock)
}

#[test]
fn an_answer_is_found_only_for_its_pool_version_and_inputs() {
    let (c, _) = cache(spec(60, 1 << 20));
    let k = c.key("stable-pool", "1", &row(0.5));
    assert_eq!(get(&c, &k), None);
    c.put(k.clone(), "stable-pool", "1", &answer(1));
    assert_eq!(get(&c, &k), Some(answer(1)));
    // The canary's pool, another version, other inputs: misses.
    assert_eq!(get(&c, &c.key("canary-pool", "1", &row(0.5))), None);
    assert_eq!(get(&c, &c.key("stable-pool", "2", &row(0.5))), None);
    assert_eq!(get(&c, &c.key("stable-pool", "1", &row(0.25))), None);
    assert_eq!(c.totals(), (1, 4));
    let t = c.take_counts();
    assert_eq!((t.hits, t.misses), (1, 4));
    assert_eq!(c.take_counts(), Taken::default(), "taken once");
}

#[test]
fn an_entry_expires_exactly_at_its_ttl() {
    let (c, clock) = cache(spec(60, 1 << 20));
    let k = c.key("p", "1", &row(0.5));
    c.put(k.clone(), "p", "1", &answer(1));
    clock.0.fetch_add(59_999, Ordering::Relaxed);
    assert_eq!(get(&c, &k), Some(answer(1)), "59.999 s: served");
    clock.0.fetch_add(1, Ordering::Relaxed);
    assert_eq!(get(&c, &k), None, "60 s: expired");
    assert_eq!(c.take_counts().expired, 1);
    // A pool with a TTL of its own; one of zero is never cached.
    let mut s = spec(60, 1 << 20);
    s.pool_ttl.insert("short".into(), Duration::from_secs(5));
    s.pool_ttl.insert("never".into(), Duration::ZERO);
    let (c, clock) = cache(s);
    let k = c.key("short", "1", &row(0.5));
    c.put(k.clone(), "short", "1", &answer(1));
    clock.0.fetch_add(4_999, Ordering::Relaxed);
    assert!(get(&c, &k).is_some());
    clock.0.fetch_add(1, Ordering::Relaxed);
    assert!(get(&c, &k).is_none());
    assert!(!c.caches("never"));
    let k = c.key("never", "1", &row(0.5));
    c.put(k.clone(), "never", "1", &answer(1));
    assert!(get(&c, &k).is_none());
}

#[test]
fn a_hash_collision_is_never_served() {
    let clock = Arc::new(FakeWallClock::default());
    let c = RouteCache::with_hash(spec(60, 1 << 20), clock, |_| 42);
    let a = c.key("p", "1", &row(0.5));
    let b = c.key("p", "1", &row(0.75));
    assert_eq!(a.hash, b.hash, "forced");
    c.put(a.clone(), "p", "1", &answer(1));
    assert_eq!(get(&c, &b), None, "same hash, other inputs: a miss");
    assert_eq!(get(&c, &a), Some(answer(1)));
    // The other input's answer replaces it; the first is then a miss, not the wrong answer.
    c.put(b.clone(), "p", "1", &answer(0));
    assert_eq!(get(&c, &a), None);
    assert_eq!(get(&c, &b), Some(answer(0)));
}

#[test]
fn a_flood_of_distinct_inputs_stays_within_the_bytes() {
    let max = 256 << 10;
    let (c, _) = cache(spec(60, max));
    for i in 0..20_000 {
        let k = c.key("p", "1", &row(i as f32));
        c.put(k, "p", "1", &answer(i));
    }
    c.settle();
    assert!(c.bytes() <= max, "{} bytes over {max}", c.bytes());
    assert!(
        c.bytes() > max / 2,
        "{} bytes: the bound, not far below it",
        c.bytes()
    );
    assert!(c.take_counts().evicted_size > 10_000);
}

#[test]
fn a_new_version_frees_the_old_one_s_entries() {
    let (c, _) = cache(spec(60, 1 << 20));
    for i in 0..100 {
        c.put(c.key("p", "1", &row(i as f32)), "p", "1", &answer(1));
        c.put(c.key("q", "1", &row(i as f32)), "q", "1", &answer(1));
    }
    c.settle();
    assert_eq!(c.len(), 200);
    c.retain(vec![("p".into(), "2".into()), ("q".into(), "1".into())]);
    c.settle();
    assert_eq!(c.len(), 100, "p's version-1 entries went, q's stayed");
    assert!(get(&c, &c.key("q", "1", &row(3.0))).is_some());
}

fn answered(text: &str) -> Answered {
    Answered {
        body: Bytes::from(text.to_string()),
        json_len: None,
        id_at: None,
        predictions: vec![(1, Some(0.75))],
        rows: Some((2, vec![0.5, 1.0])),
    }
}

#[test]
fn a_body_s_answer_lives_as_long_as_the_answer_it_was_made_from() {
    let (c, clock) = cache(spec(60, 1 << 20));
    let k = c.key("p", "1", &row(0.5));
    let stored = c.put(k.clone(), "p", "1", &answer(1)).expect("cached");
    clock.0.fetch_add(30_000, Ordering::Relaxed);
    let body = c.body_key("p", "1", None, b"{\"inputs\":[]}");
    assert_eq!(c.answered(&body), None, "none kept yet: nothing counted");
    assert_eq!(c.totals(), (0, 0));
    c.keep_answered(body.clone(), "p", "1", stored, answered("{}"));
    assert_eq!(c.answered(&body).as_deref(), Some(&answered("{}")));
    assert_eq!(c.totals(), (1, 0), "a body's answer is a hit");
    // Another pool, version, JSON length or body: not this answer.
    for other in [
        c.body_key("q", "1", None, b"{\"inputs\":[]}"),
        c.body_key("p", "2", None, b"{\"inputs\":[]}"),
        c.body_key("p", "1", Some("12"), b"{\"inputs\":[]}"),
        c.body_key("p", "1", None, b"{\"inputs\": []}"),
    ] {
        assert_eq!(c.answered(&other), None);
    }
    // The answers held: one (the body's entry counts in the bytes only).
    assert_eq!(c.len(), 1);
    let one = c.bytes();
    assert!(one > weight_of_answer(&c, &k), "{one}");
    // Expires with the answer: 60 s after it was stored, not after the body was kept.
    clock.0.fetch_add(29_999, Ordering::Relaxed);
    assert!(c.answered(&body).is_some(), "59.999 s");
    clock.0.fetch_add(1, Ordering::Relaxed);
    assert_eq!(c.answered(&body), None, "60 s");
    assert_eq!(get(&c, &k), None);
    assert_eq!(
        c.take_counts().expired,
        1,
        "one answer expired (its body is not counted)"
    );
    // An answer already as old as its TTL is not kept for a body.
    c.keep_answered(body.clone(), "p", "1", stored, answered("{}"));
    assert_eq!(c.answered(&body), None);
}

/// The bytes the cache holds with only `k`'s answer in it.
fn weight_of_answer(c: &RouteCache, k: &Key) -> u64 {
    let alone = RouteCache::new(c.spec().clone(), Arc::new(FakeWallClock::default()));
    alone.put(k.clone(), "p", "1", &answer(1));
    alone.bytes()
}

#[test]
fn a_body_and_inputs_whose_hashes_collide_are_never_served_each_other() {
    let clock = Arc::new(FakeWallClock::default());
    let c = RouteCache::with_hash(spec(60, 1 << 20), clock, |_| 7);
    let inputs = c.key("p", "1", &row(0.5));
    let body = c.body_key("p", "1", None, b"{}");
    assert_eq!(inputs.hash, body.hash, "forced");
    let stored = c.put(inputs.clone(), "p", "1", &answer(1)).unwrap();
    assert_eq!(c.answered(&body), None, "the inputs' entry is not the body's");
    c.keep_answered(body.clone(), "p", "1", stored, answered("{}"));
    assert_eq!(get(&c, &inputs), None, "the body's entry is not the inputs'");
    assert!(c.answered(&body).is_some());
    // Equal bytes can only come from equal requests: a body key never equals an inputs key.
    assert_ne!(key::body("p", "1", None, &[]), key::canonical("p", "1", &[]));
}

/// Row `i`'s answer at p/1, and a body's entry made from it.
fn answer_and_body(c: &RouteCache, i: i64) {
    let stored = c
        .put(c.key("p", "1", &row(i as f32)), "p", "1", &answer(i))
        .unwrap();
    let body = format!("{{\"row\":{i}}}");
    let key = c.body_key("p", "1", None, body.as_bytes());
    c.keep_answered(key, "p", "1", stored, answered("{}"));
}

#[test]
fn a_new_version_frees_the_bodies_kept_for_the_old_one() {
    let (c, _) = cache(spec(60, 1 << 20));
    for i in 0..50 {
        answer_and_body(&c, i);
    }
    c.settle();
    assert_eq!(c.len(), 50);
    assert!(c.bytes() > 0);
    c.retain(vec![("p".into(), "2".into())]);
    c.settle();
    assert_eq!((c.len(), c.bytes()), (0, 0), "answers and bodies freed");
}

#[test]
fn a_flood_of_distinct_bodies_stays_within_the_bytes() {
    let max = 256 << 10;
    let (c, _) = cache(spec(60, max));
    for i in 0..20_000 {
        answer_and_body(&c, i);
    }
    c.settle();
    assert!(c.bytes() <= max, "{} bytes over {max}", c.bytes());
    assert!(!c.is_empty());
    // The bodies counted (inserted less removed, rejected ones too) are the bodies held, so
    // that `len` counts the answers.
    let bodies = c
        .entries
        .iter()
        .filter(|(_, e)| matches!(e.held, Held::Body(_)))
        .count();
    assert!(bodies > 0);
    assert_eq!(c.counts.bodies.load(Ordering::Relaxed), bodies as i64);
    assert_eq!(c.len(), c.entries.entry_count() - bodies as u64);
}
