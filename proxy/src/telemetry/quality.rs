//! The model-quality series: input and prediction drift per route variant, feedback labels
//! and live accuracy (computed in `crate::quality`, registered with the others).

use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts};

pub struct QualityMetrics {
    pub input_drift_psi: GaugeVec,
    pub prediction_drift_psi: GaugeVec,
    pub feedback_labels: IntCounterVec,
    pub accuracy: GaugeVec,
    pub feedback: IntCounterVec,
    pub dropped: IntCounterVec,
    pub store_bytes: IntGauge,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl QualityMetrics {
    pub fn new() -> (QualityMetrics, Vec<Box<dyn Collector>>) {
        let m = QualityMetrics {
            input_drift_psi: gauge(
                "input_drift_psi",
                "Largest population stability index of any input feature in the route variant's recent window against the model version's training profile (absent: too few rows or no profile)",
                &["route", "variant"],
            ),
            prediction_drift_psi: gauge(
                "prediction_drift_psi",
                "Population stability index of the predicted classes in the recent window against the training labels' class shares",
                &["route", "variant"],
            ),
            feedback_labels: counter(
                "feedback_labels_total",
                "Feedback labels joined with a prediction, by who predicted (stable, canary, shadow), model version and whether the prediction was correct",
                &["route", "variant", "version", "result"],
            ),
            accuracy: gauge(
                "model_accuracy",
                "Share of labelled predictions that were correct since the gateway started, by route, variant (stable, canary, shadow) and model version",
                &["route", "variant", "version"],
            ),
            feedback: counter(
                "feedback_total",
                "Feedback items by result: joined, unknown, expired, duplicate, ambiguous, other_tenant, invalid, unavailable",
                &["result"],
            ),
            dropped: counter(
                "quality_dropped_total",
                "Drift samples and feedback records not kept, by reason (queue_full: the background worker was behind; store_error: the shared store failed)",
                &["reason"],
            ),
            store_bytes: IntGauge::new(
                "feedback_store_bytes",
                "Bytes the local feedback store holds (predictions waiting for labels), bounded by quality.feedback.max_bytes",
            )
            .expect("valid metric"),
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.input_drift_psi.clone()),
            Box::new(m.prediction_drift_psi.clone()),
            Box::new(m.feedback_labels.clone()),
            Box::new(m.accuracy.clone()),
            Box::new(m.feedback.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.store_bytes.clone()),
        ];
        (m, collectors)
    }
}
