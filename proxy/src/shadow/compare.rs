//! One mirrored pair, compared: the primary's outputs against the shadow's, tensor by tensor.
//!
//! A prediction's class is the model's label output (an integer tensor with one value per
//! row) or, without one, the argmax of its probabilities (the first float tensor shaped
//! `[rows, classes]`). Rows agree when their classes do; models without either are compared
//! on their first float output, rows agreeing within [`VALUE_TOLERANCE`].

use inference::{NamedTensor, Tensor};
use serde::Serialize;

use crate::simple::{as_f64, as_i64};

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

/// A named output tensor, owned (a decoded answer) or borrowed (a local pool's outputs beside
/// the model's output names), so that per-request metrics read outputs without copying them.
pub trait Output {
    fn name(&self) -> &str;
    fn tensor(&self) -> &Tensor;
}

impl Output for NamedTensor {
    fn name(&self) -> &str {
        &self.name
    }
    fn tensor(&self) -> &Tensor {
        &self.tensor
    }
}

impl Output for (&str, &Tensor) {
    fn name(&self) -> &str {
        self.0
    }
    fn tensor(&self) -> &Tensor {
        self.1
    }
}

/// The class of each row, from a label output or the argmax of probabilities.
pub fn classes<O: Output>(outputs: &[O]) -> Option<Vec<i64>> {
    let label = outputs
        .iter()
        .filter(|o| o.tensor().shape().len() <= 2 && o.tensor().row_len() == 1)
        .find_map(|o| as_i64(o.tensor().data()));
    if label.is_some() {
        return label;
    }
    let p = probabilities(outputs)?;
    let width = p.tensor().row_len();
    let values = as_f64(p.tensor().data())?;
    Some(
        values
            .chunks(width.max(1))
            .map(|row| argmax(row) as i64)
            .collect(),
    )
}

/// [`predictions`] straight from an answer's JSON, for the metrics of every remote answer.
///
/// Decoding the answer into tensors first (names, types and every value copied, each scalar
/// kept with its JSON kind) was the largest single cost of a proxied request after the
/// gateway's own I/O. This reads only what predictions need ([`super::scan`]), without
/// copying strings. `None` whenever it is not sure to agree with a full decode: outputs of
/// other types, `parameters`, nested `data`, escapes, integers too large for an `f64`, numbers
/// serde_json might round otherwise — the caller then decodes.
pub fn predictions_from_json(json: &[u8]) -> Option<Vec<(i64, Option<f64>)>> {
    use inference::DataType;

    let views = super::scan::outputs(json)?;
    // What `predictions` reads of each output: its name, type, shape, and values as f64.
    let mut outputs = Vec::with_capacity(views.len());
    for o in views {
        let dtype = DataType::parse(o.datatype).ok()?;
        let mut data = o.data?;
        if inference::tensor::element_count(&o.shape)? != data.len() {
            return None;
        }
        // Values as the tensor would hold them; anything a decode would refuse, or round
        // differently, goes to the full decode instead.
        let fits = |x: f64, lo: f64, hi: f64| x.fract() == 0.0 && x >= lo && x <= hi;
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        let ok = match dtype {
            DataType::F32 => {
                data.iter_mut().for_each(|x| *x = *x as f32 as f64);
                true
            }
            DataType::F64 => true,
            DataType::I64 => data.iter().all(|&x| fits(x, -EXACT, EXACT)),
            DataType::I32 => data.iter().all(|&x| fits(x, i32::MIN as f64, i32::MAX as f64)),
            DataType::U8 => data.iter().all(|&x| fits(x, 0.0, 255.0)),
            _ => false,
        };
        if !ok {
            return None;
        }
        outputs.push((o.name == "probabilities", dtype, o.shape, data));
    }
    let row_len = |shape: &[usize]| shape.iter().skip(1).product::<usize>();
    // As `classes` and `probabilities` choose: an integer output of one value per row, else
    // the argmax of the float [rows, classes] output named "probabilities" (or the first).
    let label = outputs
        .iter()
        .find(|(_, dtype, shape, _)| !dtype.is_float() && shape.len() <= 2 && row_len(shape) == 1);
    let float2d = |o: &&(bool, DataType, Vec<usize>, Vec<f64>)| o.1.is_float() && o.2.len() == 2;
    let probabilities = outputs
        .iter()
        .filter(float2d)
        .find(|o| o.0)
        .or_else(|| outputs.iter().find(float2d));
    let classes: Vec<i64> = match (label, probabilities) {
        (Some((.., data)), _) => data.iter().map(|&x| x as i64).collect(),
        (None, Some((_, _, shape, data))) => data
            .chunks(row_len(shape).max(1))
            .map(|row| argmax(row) as i64)
            .collect(),
        (None, None) => return Some(Vec::new()),
    };
    let top: Option<Vec<f64>> = probabilities.map(|(_, _, shape, data)| {
        data.chunks(row_len(shape).max(1))
            .map(|row| row.iter().copied().fold(f64::NAN, f64::max))
            .collect()
    });
    Some(
        classes
            .into_iter()
            .enumerate()
            .map(|(i, c)| (c, top.as_ref().and_then(|t| t.get(i).copied())))
            .collect(),
    )
}

/// Per row: the predicted class and, when the model gives probabilities, the top one (the
/// confidence). Empty for outputs that are not a classifier's.
pub fn predictions<O: Output>(outputs: &[O]) -> Vec<(i64, Option<f64>)> {
    let Some(classes) = classes(outputs) else {
        return Vec::new();
    };
    let top: Option<Vec<f64>> = probabilities(outputs).and_then(|p| {
        let width = p.tensor().row_len().max(1);
        let values = as_f64(p.tensor().data())?;
        Some(
            values
                .chunks(width)
                .map(|row| row.iter().copied().fold(f64::NAN, f64::max))
                .collect(),
        )
    });
    classes
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, top.as_ref().and_then(|t| t.get(i).copied())))
        .collect()
}

/// The probabilities: the output so named, else the first float `[rows, classes]` output.
fn probabilities<O: Output>(outputs: &[O]) -> Option<&O> {
    let float2d = |o: &&O| o.tensor().dtype().is_float() && o.tensor().shape().len() == 2;
    outputs
        .iter()
        .filter(float2d)
        .find(|o| o.name() == "probabilities")
        .or_else(|| outputs.iter().find(float2d))
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |best, (i, &x)| if x > best.1 { (i, x) } else { best },
        )
        .0
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

    /// The fast reading agrees with a full decode wherever it answers, and answers for what
    /// inference servers send.
    #[test]
    fn predictions_from_json_agree_with_a_full_decode() {
        use rand::{RngExt, SeedableRng};
        let slow = |body: &[u8]| {
            inference::protocol::decode_response(body, None)
                .ok()
                .map(|d| predictions(&d.outputs))
        };
        let same = |a: &[(i64, Option<f64>)], b: &[(i64, Option<f64>)]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.0 == y.0 && x.1.map(f64::to_bits) == y.1.map(f64::to_bits))
        };
        let typical = br#"{"model_name":"breast-cancer","model_version":"1","id":"a8","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]},{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.99999976,2.0861626e-7]}]}"#;
        let fast = predictions_from_json(typical).expect("the usual answer is read directly");
        assert!(same(&fast, &slow(typical).unwrap()));
        assert_eq!(fast[0].0, 0);

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names = ["label", "probabilities", "scores", "x\\u0041"];
        let dtypes = ["INT64", "INT32", "UINT8", "FP32", "FP64", "BOOL", "INT8", "FP16"];
        let (mut answered, mut cases) = (0, 0);
        for _ in 0..3000 {
            let mut outputs = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let rows = rng.random_range(0..4usize);
                let shape: Vec<usize> = if rng.random_bool(0.5) {
                    vec![rows]
                } else {
                    vec![rows, rng.random_range(1..4)]
                };
                let mut count: usize = shape.iter().product();
                if rng.random_bool(0.05) {
                    count += 1; // a wrong element count
                }
                let dtype = dtypes[rng.random_range(0..dtypes.len())];
                let values: Vec<String> = (0..count)
                    .map(|_| match rng.random_range(0..6) {
                        0 => format!("{}", rng.random_range(-3..300)),
                        1 => format!("{:.3}", rng.random_range(0.0..1.0)),
                        2 => "1.0".into(),
                        3 => "true".into(),
                        4 => "1e300".into(),
                        _ => format!("{}", rng.random_range(0..3)),
                    })
                    .collect();
                let mut data = format!("[{}]", values.join(","));
                if rng.random_bool(0.05) {
                    data = format!("[{data}]"); // nested
                }
                let params = if rng.random_bool(0.05) {
                    r#","parameters":{}"#
                } else {
                    ""
                };
                outputs.push(format!(
                    r#"{{"name":"{}","datatype":"{dtype}","shape":{shape:?},"data":{data}{params}}}"#,
                    names[rng.random_range(0..names.len())]
                ));
            }
            let body = format!(r#"{{"model_version":"1","outputs":[{}]}}"#, outputs.join(","));
            cases += 1;
            if let Some(fast) = predictions_from_json(body.as_bytes()) {
                answered += 1;
                let full =
                    slow(body.as_bytes()).unwrap_or_else(|| panic!("decode refused what was read: {body}"));
                assert!(same(&fast, &full), "{body}: {fast:?} vs {full:?}");
            }
        }
        assert!(answered > cases / 10, "read directly: {answered} of {cases}");
    }

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
