//! Tests of `metrics.rs`.

use super::*;

#[test]
fn class_labels_are_bounded() {
    assert_eq!(class_label(0), "0");
    assert_eq!(class_label(7), "7");
    assert_eq!(class_label(MAX_CLASS_LABEL), "100");
    assert_eq!(class_label(MAX_CLASS_LABEL + 1), "other");
    assert_eq!(class_label(-1), "other");
}

/// The cached series count into the same families and labels as direct lookups.
#[test]
fn cached_series_write_the_labelled_series() {
    let m = Metrics::new();
    let cache = SeriesCache::new(["iris".to_string()].iter());
    assert!(cache.get(&m, "other-route", Variant::Stable, "1").is_none());
    let canary = cache.get(&m, "iris", Variant::Canary, "2").unwrap();
    canary.request(&m, 200, Duration::from_millis(3), Some(Duration::from_millis(1)));
    canary.request(&m, 503, Duration::from_millis(1), None);
    canary.request(&m, 0, Duration::ZERO, None);
    for (class, p) in [(1, Some(0.9)), (1, None), (250, Some(0.6)), (-3, None)] {
        canary.prediction(&m, class, p);
    }
    let count = |labels: &[&str]| m.requests.with_label_values(labels).get();
    assert_eq!(count(&["iris", "canary", "2", "2xx"]), 1);
    assert_eq!(count(&["iris", "canary", "2", "5xx"]), 1);
    assert_eq!(count(&["iris", "canary", "2", "none"]), 1);
    assert_eq!(
        m.duration
            .with_label_values(&["iris", "canary"])
            .get_sample_count(),
        3
    );
    assert_eq!(
        m.inference
            .with_label_values(&["iris", "canary"])
            .get_sample_count(),
        1
    );
    assert_eq!(
        m.confidence
            .with_label_values(&["iris", "canary"])
            .get_sample_count(),
        2
    );
    assert_eq!(m.predictions.with_label_values(&["iris", "canary", "1"]).get(), 2);
    assert_eq!(
        m.predictions
            .with_label_values(&["iris", "canary", "other"])
            .get(),
        2
    );
    // The stable variant's series are its own.
    assert_eq!(
        m.duration
            .with_label_values(&["iris", "stable"])
            .get_sample_count(),
        0
    );
    assert_eq!(status_class(101), "1xx");
    assert_eq!(status_class(404), "4xx");
}
