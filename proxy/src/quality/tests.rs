use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::*;
use crate::config::quality::FeedbackSettings;

fn quality(ttl_s: u64) -> (Arc<Quality>, Arc<FakeWallClock>) {
    let clock = Arc::new(FakeWallClock::default());
    clock.0.store(1_000_000, Relaxed);
    let settings = FeedbackSettings {
        enabled: true,
        ttl: Duration::from_secs(ttl_s),
        max_bytes: 1 << 20,
        redis: None,
    };
    (
        Quality::new(&settings, Arc::new(Metrics::new()), clock.clone()),
        clock,
    )
}

fn served(q: &Quality, id: &str, tenant: &str, variant: &str, classes: Vec<i64>) {
    q.served(
        id,
        Served {
            tenant: tenant.into(),
            route: "m".into(),
            variant: variant.into(),
            version: "1".into(),
            forced: false,
            classes,
            at_ms: q.clock.now_ms(),
        },
    );
}

fn item(id: &str, labels: Vec<i64>) -> Item {
    Item {
        request_id: id.into(),
        labels,
    }
}

fn join(q: &Quality, tenant: &str, model: &str, items: Vec<Item>) -> Vec<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(q.join(tenant, model, &items)).0
}

#[test]
fn feedback_joins_counts_and_refuses_what_it_cannot_join_safely() {
    let (q, clock) = quality(60);
    served(&q, "a", "t1", "stable", vec![1, 0, 1]);
    served(&q, "b", "t1", "canary", vec![1]);
    served(&q, "c", "t1", "stable", vec![0]);
    let out = join(
        &q,
        "t1",
        "m",
        vec![
            item("a", vec![1, 1, 1]),
            item("b", vec![1, 0]),
            item("zz", vec![1]),
        ],
    );
    assert_eq!(out[0], Outcome::Joined { rows: 3, correct: 2 });
    assert_eq!(out[1], Outcome::Rows { labels: 2, rows: 1 });
    assert_eq!(out[2], Outcome::Unknown);
    // A refused item is not consumed: the right labels still join.
    assert_eq!(
        join(&q, "t2", "m", vec![item("b", vec![1])])[0],
        Outcome::OtherTenant
    );
    assert_eq!(
        join(&q, "t1", "other", vec![item("b", vec![1])])[0],
        Outcome::OtherModel("m".into())
    );
    assert_eq!(
        join(&q, "t1", "m", vec![item("b", vec![1])])[0],
        Outcome::Joined { rows: 1, correct: 1 }
    );
    assert_eq!(
        join(&q, "t1", "m", vec![item("a", vec![1, 1, 1])])[0],
        Outcome::Duplicate
    );
    // The TTL, on the fake clock: 60 s is still in, 60.001 s is out.
    clock.0.fetch_add(60_000, Relaxed);
    served(&q, "d", "t1", "stable", vec![1]);
    clock.0.fetch_add(1, Relaxed);
    assert_eq!(
        join(&q, "t1", "m", vec![item("d", vec![1])])[0],
        Outcome::Joined { rows: 1, correct: 1 }
    );
    assert_eq!(
        join(&q, "t1", "m", vec![item("c", vec![0])])[0],
        Outcome::Expired { age_s: 60, ttl_s: 60 }
    );
    let tallies = q.tallies.lock().clone();
    let stable = &tallies[&("m".to_string(), "stable".to_string(), "1".to_string())];
    assert_eq!((stable.labelled, stable.correct), (4, 3));
    assert_eq!(
        join(&q, "t1", "m", vec![item("bad id", vec![1])])[0],
        Outcome::BadId
    );
}

#[test]
fn shadows_are_joined_whether_they_answer_before_or_after_the_label() {
    let (q, _) = quality(60);
    let shadow = |classes| ShadowServed {
        pool: "s".into(),
        version: "3".into(),
        classes,
    };
    served(&q, "early", "t", "stable", vec![1, 1]);
    q.shadow_served("early", shadow(vec![1, 0]));
    served(&q, "late", "t", "stable", vec![0]);
    join(
        &q,
        "t",
        "m",
        vec![item("early", vec![1, 0]), item("late", vec![0])],
    );
    q.shadow_served("late", shadow(vec![0]));
    let paired = q.paired.lock().clone();
    let (s, p) = &paired[&("m".to_string(), "s".to_string(), "3".to_string())];
    assert_eq!((s.labelled, s.correct), (3, 3), "the shadow got all three right");
    assert_eq!(
        (p.labelled, p.correct),
        (3, 2),
        "the primary missed one on the same rows"
    );
}

#[test]
fn queued_remote_bodies_are_bounded_in_bytes_as_well_as_in_number() {
    let (q, _) = quality(60);
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/breast-cancer/1/profile.json");
    let profile = Arc::new(Profile::load(&path, Some(30)).unwrap());
    let w = q.window("m", Variant::Stable, "1", Some(&profile), 1000);
    let dropped = || q.metrics.quality.dropped.with_label_values(&["queue_full"]).get();
    // Four bodies of a quarter of the bound fit; the fifth crosses it.
    let big = Bytes::from(vec![b' '; BODY_BYTES / 4]);
    for _ in 0..4 {
        q.record_body(w.clone(), big.clone(), None);
    }
    assert_eq!(dropped(), 0);
    q.record_body(w.clone(), big.clone(), None);
    assert_eq!(dropped(), 1);
    assert_eq!(q.bodies.len(), 4);
    // Decoding frees the room (these bodies are not JSON: they are skipped, not counted).
    let settings = DriftSettings {
        window: 1000,
        sample_every: 1,
        min_rows: 200,
        interval: Duration::from_secs(5),
        threshold: 0.25,
    };
    q.compute(&settings, |_, _| true);
    assert_eq!(q.body_bytes.load(Relaxed), 0);
    q.record_body(w, big, None);
    assert_eq!(q.bodies.len(), 1);
}

#[test]
fn a_prediction_remembers_at_most_max_shadows_shadows() {
    let (q, _) = quality(60);
    served(&q, "r", "t", "stable", vec![1]);
    for i in 0..store::MAX_SHADOWS + 1 {
        q.shadow_served(
            "r",
            ShadowServed {
                pool: format!("s{i}"),
                version: "1".into(),
                classes: vec![1],
            },
        );
    }
    join(&q, "t", "m", vec![item("r", vec![1])]);
    assert_eq!(
        q.paired.lock().len(),
        store::MAX_SHADOWS,
        "the shadow past the bound is not joined"
    );
}

#[test]
fn redis_writes_past_the_queue_are_dropped_and_counted() {
    // Nothing listens on port 1: the writer keeps retrying, so writes only wait.
    let settings = FeedbackSettings {
        enabled: true,
        ttl: Duration::from_secs(60),
        max_bytes: 1 << 20,
        redis: Some(crate::config::quality::FeedbackRedis {
            url: "redis://127.0.0.1:1".into(),
            prefix: "test".into(),
            timeout: Duration::from_millis(100),
        }),
    };
    let q = Quality::new(
        &settings,
        Arc::new(Metrics::new()),
        Arc::new(FakeWallClock::default()),
    );
    let dropped = || q.metrics.quality.dropped.with_label_values(&["queue_full"]).get();
    for i in 0..QUEUE {
        served(&q, &format!("r{i}"), "t", "stable", vec![1]);
    }
    assert_eq!((q.writes.len(), dropped()), (QUEUE, 0));
    served(&q, "one-more", "t", "stable", vec![1]);
    assert_eq!((q.writes.len(), dropped()), (QUEUE, 1));
}
