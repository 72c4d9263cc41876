//! The served models give what Python's onnxruntime gives for the same inputs, and dynamic
//! batching never changes an answer.

use std::time::Duration;

use crate::common::*;
use inference::{NamedTensor, Pool, PoolConfig, Tensor, TensorData};

/// ONNX Runtime's CPU kernels pick a different GEMM path for one row than for many, so a
/// row's float outputs can differ in the last bits with the batch size it is run in. Python's
/// onnxruntime does the same: for breast-cancer/2 (a linear model) one row alone differs from
/// the same row in a batch of 24 by up to 1.2e-7. Batching must not add anything beyond that:
/// labels are always equal, probabilities within this bound (and bit-identical for the MLPs).
const BATCH_SIZE_VARIANCE: f32 = 1e-6;

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= BATCH_SIZE_VARIANCE,
            "{what}: {got:?} vs {want:?}"
        );
    }
}

fn input(rows: &[Vec<f64>]) -> Vec<NamedTensor> {
    let cols = rows[0].len();
    let data: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    vec![NamedTensor {
        name: "input".into(),
        tensor: Tensor::new(vec![rows.len(), cols], TensorData::F32(data)).unwrap(),
    }]
}

fn labels(outputs: &[Tensor]) -> Vec<i64> {
    match outputs[0].data() {
        TensorData::I64(v) => v.clone(),
        other => panic!("label is {other:?}"),
    }
}

fn probabilities(outputs: &[Tensor]) -> Vec<f32> {
    match outputs[1].data() {
        TensorData::F32(v) => v.clone(),
        other => panic!("probabilities are {other:?}"),
    }
}

#[tokio::test]
async fn every_model_matches_python_onnxruntime() {
    let repo = load(models_dir(), PoolConfig::default());
    let mut checked = 0;
    for (name, version, pool) in repo.iter() {
        let v = vectors(name, version);
        let tolerance = v["tolerance"].as_f64().unwrap();
        let rows = vector_rows(&v);
        let want_labels: Vec<i64> = v["expected"]["label"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let want_probs: Vec<f64> = v["expected"]["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect();
        let classes = want_probs.len() / rows.len();

        // All rows in one request.
        let out = pool.infer(input(&rows)).await.unwrap();
        assert_eq!(out[1].shape(), &[rows.len(), classes]);
        assert_eq!(labels(&out), want_labels, "{name}/{version} labels");
        for (i, (got, want)) in probabilities(&out).iter().zip(&want_probs).enumerate() {
            assert!(
                (*got as f64 - want).abs() <= tolerance,
                "{name}/{version} probability {i}: {got} vs python {want}"
            );
        }
        // Row by row: the same labels, and the same probabilities up to ONNX Runtime's own
        // batch-size variance (see BATCH_SIZE_VARIANCE).
        let batched = probabilities(&out);
        for (i, row) in rows.iter().enumerate() {
            let one = pool.infer(input(std::slice::from_ref(row))).await.unwrap();
            assert_eq!(labels(&one), vec![want_labels[i]]);
            assert_close(
                &probabilities(&one),
                &batched[i * classes..(i + 1) * classes],
                &format!("{name}/{version} row {i}"),
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 5, "every bundled model version has test vectors");
}

/// Concurrent single-row requests stacked by the pool (max_batch 32) answer exactly as an
/// unbatched pool (max_batch 1) does: for the MLP, bit for bit.
#[tokio::test]
async fn batched_and_unbatched_pools_agree() {
    let path = models_dir().join("breast-cancer/1/model.onnx");
    let unbatched = Pool::load(
        "breast-cancer",
        "1",
        &path,
        PoolConfig {
            max_batch: 1,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let batched = std::sync::Arc::new(
        Pool::load(
            "breast-cancer",
            "1",
            &path,
            // A long window so that the concurrent requests below surely meet in batches.
            PoolConfig {
                max_batch: 32,
                max_delay: Duration::from_millis(100),
                ..PoolConfig::default()
            },
        )
        .unwrap(),
    );
    let rows = vector_rows(&vectors("breast-cancer", 1));
    let tasks: Vec<_> = rows
        .iter()
        .map(|row| {
            let pool = batched.clone();
            let one = input(std::slice::from_ref(row));
            tokio::spawn(async move { pool.infer(one).await.unwrap() })
        })
        .collect();
    for (row, task) in rows.iter().zip(tasks) {
        let from_batch = task.await.unwrap();
        let alone = unbatched.infer(input(std::slice::from_ref(row))).await.unwrap();
        assert_eq!(from_batch, alone);
    }
    let stats = batched.stats();
    assert_eq!(stats.requests, rows.len() as u64);
    assert!(
        stats.batches < stats.requests,
        "requests were not batched: {stats:?}"
    );
}
