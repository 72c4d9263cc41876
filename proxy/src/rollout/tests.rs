//! The engine on a fake clock: windows are fed synthetic answers, time moves by hand.

use std::path::PathBuf;

use super::*;
use crate::config;

/// The config tests' base config, with the canary's weight, a rollout and shadows.
fn config(rollout: &str, weight: u8, shadows: &str) -> Config {
    let text = config::tests::base()
        .replace(
            "canary: {pool: b, weight: 10}",
            &format!("canary: {{pool: b, weight: {weight}, rollout: {rollout}}}"),
        )
        .replace(
            "shadows: [{pool: b, percent: 50}]",
            &format!("shadows: [{shadows}]"),
        );
    config::parse(&PathBuf::from("t.yaml"), &text).unwrap_or_else(|e| panic!("{e:?}"))
}

const POLICY: &str = "{steps: [5, 25, 50, 100], interval: 1m, min_requests: 20, gates: {max_error_rate_delta: 0.01, max_p99_ratio: 1.5}}";

fn engine(file: Option<PathBuf>) -> (Arc<Rollouts>, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::default());
    let r = Rollouts::new(file, clock.clone(), Arc::new(Metrics::new()));
    (r, clock)
}

fn weight(c: &Config) -> u8 {
    c.routes["m"].canary.as_ref().unwrap().weight
}

/// `n` answers of each variant: canary with `status` and `canary_ms`, stable 200 in 10 ms.
fn traffic(r: &Rollouts, n: usize, status: u16, canary_ms: u64) {
    for _ in 0..n {
        r.observe("m", Variant::Stable, 200, Duration::from_millis(10));
        r.observe("m", Variant::Canary, status, Duration::from_millis(canary_ms));
    }
}

fn policy(text: &str) -> Rollout {
    config(text, 0, "{pool: b, percent: 10}").routes["m"]
        .canary
        .clone()
        .unwrap()
        .rollout
        .unwrap()
}

#[test]
fn drift_and_accuracy_gates_pass_fail_or_wait() {
    let p = policy(
        "{steps: [10], interval: 1m, min_requests: 10, gates: {max_input_drift_psi: 0.2, min_accuracy_delta: -0.01, min_labels: 50}}",
    );
    let good = Figures {
        canary_requests: 100,
        canary_labelled: 60,
        canary_correct: 57,
        stable_labelled: 200,
        stable_correct: 190,
        input_drift_psi: Some(0.05),
        ..Figures::default()
    };
    assert!(
        matches!(evaluate(&p, &good), Verdict::Pass(_)),
        "{:?}",
        evaluate(&p, &good)
    );
    let worse = Figures {
        canary_correct: 50,
        ..good.clone()
    };
    match evaluate(&p, &worse) {
        Verdict::Fail(why) => assert!(why.contains("accuracy canary 83.33% vs stable 95.00%"), "{why}"),
        other => panic!("{other:?}"),
    }
    let drifted = Figures {
        input_drift_psi: Some(0.5),
        ..good.clone()
    };
    assert!(matches!(evaluate(&p, &drifted), Verdict::Fail(why) if why.contains("drift PSI 0.500")));
    let few = Figures {
        canary_labelled: 49,
        ..good.clone()
    };
    assert!(matches!(evaluate(&p, &few), Verdict::Inconclusive(why) if why.contains("50 each needed")));
    let unknown = Figures {
        input_drift_psi: None,
        ..good
    };
    assert!(matches!(evaluate(&p, &unknown), Verdict::Inconclusive(why) if why.contains("not available")));
}

#[test]
fn gates_pass_fail_or_wait() {
    let p = policy(
        "{steps: [10], interval: 1m, min_requests: 10, gates: {max_error_rate_delta: 0.01, max_p99_ratio: 1.5, min_shadow_agreement: 0.95, min_comparisons: 5}}",
    );
    let good = Figures {
        canary_requests: 100,
        stable_requests: 900,
        canary_error_rate: Some(0.01),
        stable_error_rate: Some(0.005),
        canary_p99_ms: Some(12.0),
        stable_p99_ms: Some(10.0),
        comparisons: 50,
        agreement: Some(0.98),
        ..Figures::default()
    };
    assert!(matches!(evaluate(&p, &good), Verdict::Pass(_)));
    let cases = [
        (
            Figures {
                canary_error_rate: Some(0.05),
                ..good.clone()
            },
            "error rate",
        ),
        (
            Figures {
                canary_p99_ms: Some(16.0),
                ..good.clone()
            },
            "p99",
        ),
        (
            Figures {
                agreement: Some(0.9),
                ..good.clone()
            },
            "agreement",
        ),
    ];
    for (f, what) in cases {
        match evaluate(&p, &f) {
            Verdict::Fail(why) => assert!(why.contains(what), "{why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    for (f, what) in [
        (
            Figures {
                canary_requests: 9,
                ..good.clone()
            },
            "canary requests",
        ),
        (
            Figures {
                comparisons: 4,
                ..good.clone()
            },
            "comparisons",
        ),
        (
            Figures {
                stable_p99_ms: None,
                ..good.clone()
            },
            "stable latency",
        ),
    ] {
        match evaluate(&p, &f) {
            Verdict::Inconclusive(why) => assert!(why.contains(what), "{why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // A failing gate is not hidden by another that cannot be judged yet.
    let f = Figures {
        canary_error_rate: Some(0.5),
        comparisons: 0,
        ..good
    };
    assert!(matches!(evaluate(&p, &f), Verdict::Fail(_)));
}

#[test]
fn a_good_canary_is_promoted_through_every_step() {
    let (r, clock) = engine(None);
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    assert_eq!(weight(&c), 5, "the first step replaces the file's weight");
    let mut seen = vec![weight(&c)];
    for _ in 0..3 {
        traffic(&r, 30, 200, 11);
        clock.advance(Duration::from_secs(59));
        assert!(!r.tick(), "the window is not over yet");
        clock.advance(Duration::from_secs(1));
        assert!(r.tick(), "the window is over and the gates pass");
        r.adopt(&mut c);
        seen.push(weight(&c));
    }
    assert_eq!(seen, vec![5, 25, 50, 100]);
    let s = r.state("m").unwrap();
    assert_eq!(s.status, Status::Promoted);
    let passes: Vec<&Decision> = s.history.iter().filter(|d| d.result == "pass").collect();
    assert_eq!(passes.len(), 3);
    assert!(
        passes[0].reason.contains("error rate canary 0.00%"),
        "{}",
        passes[0].reason
    );
    assert_eq!(passes[0].figures.as_ref().unwrap().canary_requests, 30);
    // Done: nothing more happens.
    traffic(&r, 30, 500, 100);
    clock.advance(Duration::from_secs(600));
    assert!(!r.tick());
}

#[test]
fn a_failing_canary_is_rolled_back_within_one_interval() {
    let (r, clock) = engine(None);
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    traffic(&r, 30, 500, 10);
    clock.advance(Duration::from_secs(60));
    assert!(r.tick());
    r.adopt(&mut c);
    assert_eq!(weight(&c), 0);
    let s = r.state("m").unwrap();
    assert_eq!(s.status, Status::RolledBack);
    let last = s.history.back().unwrap();
    assert_eq!(
        (last.result.as_str(), last.weight_from, last.weight_to),
        ("fail", 5, 0)
    );
    assert!(
        last.reason.contains("error rate canary 100.00%"),
        "{}",
        last.reason
    );
}

#[test]
fn a_disagreeing_canary_is_held_when_so_configured() {
    let (r, clock) = engine(None);
    let hold = "{steps: [5, 50, 100], interval: 1m, min_requests: 20, gates: {min_shadow_agreement: 0.99, min_comparisons: 10}, on_failure: hold}";
    let mut c = config(hold, 0, "{pool: b, percent: 100}");
    r.adopt(&mut c);
    traffic(&r, 30, 200, 10);
    for i in 0..40 {
        // Stable (version 1) answered; the canary's pool b shadowed: 1 in 4 disagree.
        r.observe_comparison("m", "b", "1", i % 4 != 0);
        // Comparisons of other pairs do not count.
        r.observe_comparison("m", "a", "2", false);
    }
    clock.advance(Duration::from_secs(60));
    assert!(!r.tick(), "held: the weight does not move");
    let s = r.state("m").unwrap();
    assert_eq!((s.status, s.weight), (Status::Held, 5));
    assert!(
        s.history
            .back()
            .unwrap()
            .reason
            .contains("shadow agreement 75.00% over 40")
    );
}

#[test]
fn too_few_requests_wait_then_count() {
    let (r, clock) = engine(None);
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    traffic(&r, 5, 200, 10);
    clock.advance(Duration::from_secs(60));
    assert!(!r.tick());
    let s = r.state("m").unwrap();
    assert_eq!((s.status, s.inconclusive), (Status::Running, 1));
    assert_eq!(s.history.back().unwrap().result, "inconclusive");
    // The window keeps what it had: 5 + 15 = 20 requests are enough a minute later.
    traffic(&r, 15, 200, 10);
    clock.advance(Duration::from_secs(60));
    assert!(r.tick());
    assert_eq!(r.state("m").unwrap().weight, 25);
}

#[test]
fn an_edited_weight_takes_precedence_and_resume_continues_above_it() {
    let (r, _clock) = engine(None);
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    assert_eq!(weight(&c), 5);
    // An unrelated reload (same file weight) keeps the engine's weight.
    let mut again = config(POLICY, 10, "");
    r.adopt(&mut again);
    assert_eq!(weight(&again), 5);
    // The operator writes 40 into routes.yaml.
    let mut edited = config(POLICY, 40, "");
    r.adopt(&mut edited);
    assert_eq!(weight(&edited), 40);
    let s = r.state("m").unwrap();
    assert_eq!((s.status, s.weight), (Status::Paused, 40));
    assert_eq!(s.history.back().unwrap().result, "edit");
    r.command("m", Command::Resume).unwrap();
    r.adopt(&mut edited);
    assert_eq!(weight(&edited), 50, "the first step at or above 40");
    assert_eq!(r.state("m").unwrap().status, Status::Running);
}

#[test]
fn operator_commands() {
    let (r, _clock) = engine(None);
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    r.command("m", Command::Pause).unwrap();
    assert!(matches!(
        r.command("m", Command::Pause),
        Err(Refusal::Conflict(_))
    ));
    assert!(matches!(
        r.command("nope", Command::Pause),
        Err(Refusal::NoRollout(_))
    ));
    r.command("m", Command::Promote).unwrap();
    r.adopt(&mut c);
    assert_eq!(weight(&c), 100);
    r.command("m", Command::Abort).unwrap();
    r.adopt(&mut c);
    assert_eq!(weight(&c), 0);
    // After an abort, resume starts again from the first step.
    r.command("m", Command::Resume).unwrap();
    r.adopt(&mut c);
    assert_eq!(weight(&c), 5);
}

#[test]
fn a_restart_resumes_and_a_new_policy_starts_again() {
    let dir = std::env::temp_dir().join(format!("rollout-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("rollouts.json");
    {
        let (r, clock) = engine(Some(file.clone()));
        let mut c = config(POLICY, 10, "");
        r.adopt(&mut c);
        traffic(&r, 30, 200, 10);
        clock.advance(Duration::from_secs(60));
        assert!(r.tick());
    }
    let (r, _clock) = engine(Some(file.clone()));
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    assert_eq!(weight(&c), 25, "resumed at the step it had reached");
    let s = r.state("m").unwrap();
    assert_eq!((s.status, s.step), (Status::Running, 1));
    assert_eq!(s.history.iter().filter(|d| d.result == "pass").count(), 1);
    // Another policy is another rollout.
    let mut changed = config(
        "{steps: [1, 100], interval: 1m, min_requests: 20, gates: {max_error_rate_delta: 0.01}}",
        10,
        "",
    );
    r.adopt(&mut changed);
    assert_eq!(weight(&changed), 1);
    // A state file that cannot be read is set aside, not fatal (by the process that runs
    // the engine: the one before has stopped).
    drop(r);
    std::fs::write(&file, "{not json").unwrap();
    let (r, _) = engine(Some(file.clone()));
    let mut c = config(POLICY, 10, "");
    r.adopt(&mut c);
    assert_eq!(weight(&c), 5);
    assert!(file.with_extension("unreadable").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
