//! One mirrored pair, compared: the primary's outputs against the shadow's, tensor by tensor.
//!
//! A prediction's class is the model's label output (an integer tensor with one value per
//! row) or, without one, the argmax of its probabilities (the first float tensor shaped
//! `[rows, classes]`). Rows agree when their classes do; models without either are compared
//! on their first float output, rows agreeing within [`VALUE_TOLERANCE`].

use inference::{NamedTensor, Tensor};
use serde::Serialize;

use crate::predictions::{as_f64, as_i64, classes, probabilities};

/// For outputs that are not classes: values this close count as the same prediction.
pub const VALUE_TOLERANCE: f64 = 1e-4;

/// Top-k overlap is reported for models with more classes than this.
const TOP_K: usize = 3;

/// One output tensor, primary against shadow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorDiff {
    pub name: String,
    pub shape_match: bool,
    pub dtype_match: bool,
    /// Float outputs: largest and mean absolute difference.
    pub max_abs_diff: Option<f64>,
    pub mean_abs_diff: Option<f64>,
    /// Integer outputs: elements that are equal, of all.
    pub equal_elements: Option<(usize, usize)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Predictions (rows) compared.
    pub rows: usize,
    pub agreeing_rows: usize,
    /// Each row's class on either side (for the confusion matrix); empty without classes.
    pub primary_classes: Vec<i64>,
    pub shadow_classes: Vec<i64>,
    /// Each row's largest probability difference (empty without probabilities).
    pub row_max_delta: Vec<f64>,
    pub mean_delta: Option<f64>,
    /// Mean share of the top-k classes both sides have in common, for models with > k classes.
    pub top_k_overlap: Option<f64>,
    pub tensors: Vec<TensorDiff>,
    /// Outputs that one side lacks, or whose shapes or types differ.
    pub mismatches: Vec<String>,
}

impl Comparison {
    /// Every row agrees and the outputs have the same form.
    pub fn agrees(&self) -> bool {
        self.mismatches.is_empty() && self.agreeing_rows == self.rows
    }

    pub fn max_delta(&self) -> Option<f64> {
        self.row_max_delta.iter().copied().reduce(f64::max)
    }
}

/// Rows of a batch: the leading dimension (1 for scalars).
fn rows_of(t: &Tensor) -> usize {
    t.shape().first().copied().unwrap_or(1)
}

fn top_k(row: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

fn diff(name: &str, p: &Tensor, s: &Tensor) -> TensorDiff {
    let mut d = TensorDiff {
        name: name.to_string(),
        shape_match: p.shape() == s.shape(),
        dtype_match: p.dtype() == s.dtype(),
        max_abs_diff: None,
        mean_abs_diff: None,
        equal_elements: None,
    };
    if !d.shape_match {
        return d;
    }
    if let (Some(a), Some(b)) = (as_i64(p.data()), as_i64(s.data())) {
        d.equal_elements = Some((a.iter().zip(&b).filter(|(x, y)| x == y).count(), a.len()));
    } else if let (Some(a), Some(b)) = (as_f64(p.data()), as_f64(s.data())) {
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
        d.max_abs_diff = diffs.iter().copied().reduce(f64::max);
        d.mean_abs_diff = (!diffs.is_empty()).then(|| diffs.iter().sum::<f64>() / diffs.len() as f64);
    }
    d
}

/// Compares the primary's outputs with the shadow's.
pub fn compare(primary: &[NamedTensor], shadow: &[NamedTensor]) -> Comparison {
    let mut mismatches = Vec::new();
    let mut tensors = Vec::new();
    for p in primary {
        match shadow.iter().find(|s| s.name == p.name) {
            None => mismatches.push(format!("the shadow has no output {:?}", p.name)),
            Some(s) => {
                let d = diff(&p.name, &p.tensor, &s.tensor);
                if !d.shape_match {
                    mismatches.push(format!(
                        "output {:?}: shape {:?} vs {:?}",
                        p.name,
                        p.tensor.shape(),
                        s.tensor.shape()
                    ));
                }
                if !d.dtype_match {
                    mismatches.push(format!(
                        "output {:?}: {} vs {}",
                        p.name,
                        p.tensor.dtype(),
                        s.tensor.dtype()
                    ));
                }
                tensors.push(d);
            }
        }
    }
    for s in shadow {
        if !primary.iter().any(|p| p.name == s.name) {
            mismatches.push(format!("the shadow has an extra output {:?}", s.name));
        }
    }
    let rows = primary.first().map_or(0, |o| rows_of(&o.tensor));

    // Probabilities: per-row largest difference, overall mean, top-k overlap.
    let (mut row_max_delta, mut mean_delta, mut top_k_overlap) = (Vec::new(), None, None);
    let pp = probabilities(primary).and_then(|o| as_f64(o.tensor.data()).map(|v| (o, v)));
    let sp = probabilities(shadow).and_then(|o| as_f64(o.tensor.data()).map(|v| (o, v)));
    if let (Some((po, pv)), Some((so, sv))) = (&pp, &sp)
        && po.tensor.shape() == so.tensor.shape()
    {
        let width = po.tensor.row_len().max(1);
        let mut sum = 0.0;
        let mut overlaps = Vec::new();
        for (a, b) in pv.chunks(width).zip(sv.chunks(width)) {
            let mut max = 0.0f64;
            for (x, y) in a.iter().zip(b) {
                let d = (x - y).abs();
                max = max.max(d);
                sum += d;
            }
            row_max_delta.push(max);
            if width > TOP_K {
                let (ta, tb) = (top_k(a, TOP_K), top_k(b, TOP_K));
                overlaps.push(ta.iter().filter(|c| tb.contains(c)).count() as f64 / TOP_K as f64);
            }
        }
        mean_delta = (!pv.is_empty()).then(|| sum / pv.len() as f64);
        top_k_overlap = (!overlaps.is_empty()).then(|| overlaps.iter().sum::<f64>() / overlaps.len() as f64);
    }

    // Classes, or values for models that have none.
    let (primary_classes, shadow_classes, agreeing_rows) = match (classes(primary), classes(shadow)) {
        (Some(a), Some(b)) if a.len() == b.len() => {
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            (a, b, agree)
        }
        (Some(_), Some(_)) => (vec![], vec![], 0),
        _ => {
            let first_float = |outs: &[NamedTensor]| {
                outs.iter()
                    .find(|o| o.tensor.dtype().is_float())
                    .and_then(|o| as_f64(o.tensor.data()).map(|v| (o.tensor.row_len().max(1), v)))
            };
            let agree = match (first_float(primary), first_float(shadow)) {
                (Some((w, a)), Some((_, b))) if a.len() == b.len() => a
                    .chunks(w)
                    .zip(b.chunks(w))
                    .filter(|(x, y)| x.iter().zip(*y).all(|(p, q)| (p - q).abs() <= VALUE_TOLERANCE))
                    .count(),
                _ => 0,
            };
            (vec![], vec![], agree)
        }
    };
    Comparison {
        rows,
        agreeing_rows: agreeing_rows.min(rows),
        primary_classes,
        shadow_classes,
        row_max_delta,
        mean_delta,
        top_k_overlap,
        tensors,
        mismatches,
    }
}

#[cfg(test)]
mod tests {
    use inference::TensorData;

    use super::*;

    fn out(name: &str, shape: Vec<usize>, data: TensorData) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(shape, data).unwrap(),
        }
    }

    fn classifier(labels: Vec<i64>, probs: Vec<f32>) -> Vec<NamedTensor> {
        let rows = labels.len();
        let width = probs.len() / rows;
        vec![
            out("label", vec![rows], TensorData::I64(labels)),
            out("probabilities", vec![rows, width], TensorData::F32(probs)),
        ]
    }

    #[test]
    fn identical_outputs_agree() {
        let a = classifier(vec![0, 1], vec![0.9, 0.1, 0.2, 0.8]);
        let c = compare(&a, &a);
        assert!(c.agrees());
        assert_eq!((c.rows, c.agreeing_rows), (2, 2));
        assert_eq!(c.max_delta(), Some(0.0));
        assert_eq!(c.mean_delta, Some(0.0));
        assert_eq!(c.top_k_overlap, None, "binary: no top-k");
        assert_eq!(c.tensors[0].equal_elements, Some((2, 2)));
    }

    #[test]
    fn a_flipped_row_disagrees_with_its_delta() {
        let a = classifier(vec![0, 1], vec![0.9, 0.1, 0.2, 0.8]);
        let b = classifier(vec![0, 0], vec![0.8, 0.2, 0.6, 0.4]);
        let c = compare(&a, &b);
        assert!(!c.agrees());
        assert_eq!(c.agreeing_rows, 1);
        assert_eq!(
            (c.primary_classes.clone(), c.shadow_classes.clone()),
            (vec![0, 1], vec![0, 0])
        );
        let max = c.max_delta().unwrap();
        assert!((max - 0.4).abs() < 1e-6, "{max}");
        assert!((c.row_max_delta[0] - 0.1).abs() < 1e-6);
        assert!((c.mean_delta.unwrap() - 0.25).abs() < 1e-6);
    }

    #[test]
    fn argmax_stands_in_for_a_missing_label_and_top_k_counts_overlap() {
        let p = vec![out(
            "scores",
            vec![1, 5],
            TensorData::F32(vec![0.5, 0.2, 0.15, 0.1, 0.05]),
        )];
        let s = vec![out(
            "scores",
            vec![1, 5],
            TensorData::F32(vec![0.1, 0.5, 0.2, 0.05, 0.15]),
        )];
        let c = compare(&p, &s);
        assert_eq!(
            (c.primary_classes.clone(), c.shadow_classes.clone()),
            (vec![0], vec![1])
        );
        // top-3: {0, 1, 2} vs {1, 2, 4}: two in common.
        assert!((c.top_k_overlap.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!(!c.agrees());
    }

    #[test]
    fn shape_dtype_and_missing_outputs_are_mismatches() {
        let a = classifier(vec![1], vec![0.3, 0.7]);
        let mut b = classifier(vec![1], vec![0.3, 0.7]);
        b[1] = out("probabilities", vec![1, 2], TensorData::F64(vec![0.3, 0.7]));
        let c = compare(&a, &b);
        assert_eq!(c.agreeing_rows, 1);
        assert!(!c.agrees(), "FP32 vs FP64 is a mismatch");
        assert!(c.mismatches[0].contains("FP32 vs FP64"), "{:?}", c.mismatches);

        let c = compare(&a, &a[..1]);
        assert!(
            c.mismatches
                .iter()
                .any(|m| m.contains("no output \"probabilities\""))
        );
        let c = compare(&a[..1], &a);
        assert!(c.mismatches.iter().any(|m| m.contains("extra output")));
    }

    #[test]
    fn models_without_classes_compare_values() {
        let p = vec![out("y", vec![2], TensorData::F32(vec![1.0, 2.0]))];
        let s = vec![out("y", vec![2], TensorData::F32(vec![1.00001, 2.5]))];
        let c = compare(&p, &s);
        assert_eq!((c.rows, c.agreeing_rows), (2, 1));
        assert!(c.primary_classes.is_empty());
    }
}
