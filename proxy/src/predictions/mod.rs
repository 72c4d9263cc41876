//! Reading a model's outputs once: each row's class (the label output, or the argmax of the
//! probabilities) and its confidence (the top probability). Used by every request's
//! prediction metrics (`gateway_predictions_total`, `gateway_prediction_confidence`) and by
//! the shadow comparison alike.
//!
//! - [`scan`]: the outputs of an answer read straight from its JSON (remote answers, measured
//!   in `docs/performance.md`'s journal).

use inference::{NamedTensor, Tensor, TensorData};

pub mod scan;

/// Bounds of the histograms of |Δp|, the largest difference between two models' probabilities
/// for one prediction (the shadow aggregates and `gateway_shadow_prob_delta`).
pub const DELTA_BOUNDS: [f64; 12] = [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0];

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
/// gateway's own I/O. This reads only what predictions need ([`scan`]), without
/// copying strings. `None` whenever it is not sure to agree with a full decode: outputs of
/// other types, `parameters`, nested `data`, escapes, integers too large for an `f64`, numbers
/// serde_json might round otherwise — the caller then decodes.
pub fn predictions_from_json(json: &[u8]) -> Option<Vec<(i64, Option<f64>)>> {
    use inference::DataType;

    let views = scan::outputs(json)?;
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
pub fn probabilities<O: Output>(outputs: &[O]) -> Option<&O> {
    let float2d = |o: &&O| o.tensor().dtype().is_float() && o.tensor().shape().len() == 2;
    outputs
        .iter()
        .filter(float2d)
        .find(|o| o.name() == "probabilities")
        .or_else(|| outputs.iter().find(float2d))
}

pub fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |best, (i, &x)| if x > best.1 { (i, x) } else { best },
        )
        .0
}

pub fn as_f64(data: &TensorData) -> Option<Vec<f64>> {
    Some(match data {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F64(v) => v.clone(),
        _ => return None,
    })
}

pub fn as_i64(data: &TensorData) -> Option<Vec<i64>> {
    Some(match data {
        TensorData::I64(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as i64).collect(),
        TensorData::Bool(v) => v.iter().map(|&x| x as i64).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
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
}
