//! The simple JSON endpoint, for clients that do not speak the Open Inference Protocol:
//!
//! ```text
//! POST /predict/{model}   {"features": [f1, f2, ...]}        one row
//!                         {"features": [[...], [...]]}        several rows
//! → {"prediction": 1, "confidence": 0.97, "model_version": "1"}
//! → {"predictions": [{"prediction": 1, "confidence": 0.97}, ...], "model_version": "1"}
//! ```
//!
//! It fits models with one float input `[-1, F]` and a class output: `prediction` is the
//! `label` output (or the first integer output) and `confidence` the largest value of the
//! `probabilities` output (or the first float output with one row per input), when there is
//! one. The same conversion serves local pools and remote ones.

use crate::predictions::{as_f64, as_i64};
use inference::{DataType, InferError, ModelMetadata, NamedTensor, Tensor, TensorData, TensorSpec};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::json;
use serde_json::value::RawValue;

/// The request, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub values: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
    /// `features` was one flat row (answer with one object, not a list).
    pub single: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow)]
    features: &'a RawValue,
}

const NOT_NUMBERS: &str = "`features` must be a list of numbers, or a list of such lists of equal length";

/// Reads the body straight into a flat list of values: no JSON tree is built, and a row whose
/// length differs from the first row's is refused as soon as it is read, before any more of
/// the request is taken in (the list grows only with the numbers actually sent).
pub fn parse(body: &[u8]) -> Result<Features, InferError> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        InferError::bad_request(format!(
            "invalid JSON: {e}; expected {{\"features\": [numbers]}} or {{\"features\": [[numbers], ...]}}"
        ))
    })?;
    let mut read = Read::default();
    let mut de = serde_json::Deserializer::from_str(body.features.get());
    let parsed = serde::Deserializer::deserialize_any(&mut de, &mut read);
    if let Some(problem) = read.problem {
        return Err(InferError::bad_request(problem));
    }
    parsed.map_err(|_| InferError::bad_request(NOT_NUMBERS))?;
    if read.rows == 0 {
        return Err(InferError::bad_request("`features` is empty"));
    }
    Ok(Features {
        cols: read.cols.unwrap_or(read.values.len()),
        values: read.values,
        rows: read.rows,
        single: read.single,
    })
}

/// The parse in progress.
#[derive(Default)]
struct Read {
    values: Vec<f64>,
    rows: usize,
    /// The first row's length (lists of rows).
    cols: Option<usize>,
    single: bool,
    /// Why the body was refused, in the client's terms.
    problem: Option<String>,
}

impl Read {
    fn refuse<E: de::Error>(&mut self, problem: &str) -> E {
        self.problem.get_or_insert_with(|| problem.to_string());
        E::custom(problem)
    }
}

/// The top level: a list of numbers (one row) or of lists (rows).
impl<'de> Visitor<'de> for &mut Read {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_NUMBERS)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Item(&mut *self))?.is_some() {}
        if self.single && self.values.is_empty() {
            self.rows = 0;
        }
        Ok(())
    }
}

/// One element of the top-level list: a number (the list is one row) or a row.
struct Item<'r>(&'r mut Read);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_NUMBERS)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let read = self.0;
        if read.cols.is_some() {
            return Err(read.refuse(NOT_NUMBERS));
        }
        read.single = true;
        read.rows = 1;
        read.values.push(v);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let read = self.0;
        if read.single {
            return Err(read.refuse(NOT_NUMBERS));
        }
        let before = read.values.len();
        while let Some(v) = seq.next_element::<Number>()? {
            let Some(v) = v.0 else {
                return Err(read.refuse(NOT_NUMBERS));
            };
            if read.cols.is_some_and(|cols| read.values.len() - before >= cols) {
                return Err(read.refuse(NOT_NUMBERS));
            }
            read.values.push(v);
        }
        let len = read.values.len() - before;
        if len == 0 {
            return Err(read.refuse(NOT_NUMBERS));
        }
        match read.cols {
            None => read.cols = Some(len),
            Some(cols) if cols != len => return Err(read.refuse(NOT_NUMBERS)),
            Some(_) => {}
        }
        read.rows += 1;
        Ok(())
    }
}

/// A number, or `None` for anything else (so that the refusal says what `features` must be).
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                Ok(Number(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Number, A::Error> {
                Ok(Number(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Number, A::Error> {
                Ok(Number(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The one float input the endpoint can feed, or why the model does not fit.
fn input_spec(meta: &ModelMetadata) -> Result<&TensorSpec, InferError> {
    match meta.inputs.as_slice() {
        [spec] if spec.datatype.is_float() && spec.shape.len() == 2 => Ok(spec),
        _ => Err(InferError::bad_request(format!(
            "model {} does not take one float input of shape [-1, F]; use /v2/models/{}/infer",
            meta.name, meta.name
        ))),
    }
}

/// The request as the model's input tensor.
pub fn to_inputs(meta: &ModelMetadata, f: &Features) -> Result<Vec<NamedTensor>, InferError> {
    let spec = input_spec(meta)?;
    let want = spec.shape[1];
    if want >= 0 && want as usize != f.cols {
        return Err(InferError::bad_request(format!(
            "model {} takes {want} features per row, got {}",
            meta.name, f.cols
        )));
    }
    let data = match spec.datatype {
        DataType::F32 => TensorData::F32(f.values.iter().map(|&v| v as f32).collect()),
        _ => TensorData::F64(f.values.clone()),
    };
    let tensor = Tensor::new(vec![f.rows, f.cols], data).map_err(InferError::BadRequest)?;
    Ok(vec![NamedTensor {
        name: spec.name.clone(),
        tensor,
    }])
}

/// The request as an Open Inference Protocol JSON body, for remote pools.
pub fn to_oip_body(meta: &ModelMetadata, f: &Features) -> Result<Vec<u8>, InferError> {
    // The same checks as for a local pool, so both answer a bad request alike.
    to_inputs(meta, f)?;
    let spec = &meta.inputs[0];
    Ok(serde_json::to_vec(&json!({
        "inputs": [{"name": spec.name, "shape": [f.rows, f.cols], "datatype": spec.datatype.as_str(), "data": f.values}]
    }))
    .expect("serializable"))
}

/// Builds the answer from named outputs.
pub fn respond(
    outputs: &[(String, Tensor)],
    f: &Features,
    model_version: &str,
) -> Result<Vec<u8>, InferError> {
    let label = outputs
        .iter()
        .find(|(n, _)| n == "label")
        .or_else(|| outputs.iter().find(|(_, t)| as_i64(t.data()).is_some()))
        .and_then(|(_, t)| as_i64(t.data()).filter(|v| v.len() == f.rows));
    let probabilities = outputs
        .iter()
        .find(|(n, _)| n == "probabilities")
        .or_else(|| {
            outputs
                .iter()
                .find(|(_, t)| as_f64(t.data()).is_some() && t.shape().first() == Some(&f.rows))
        })
        .and_then(|(_, t)| as_f64(t.data()).filter(|v| !v.is_empty() && v.len() % f.rows == 0));
    let per_row = probabilities.as_ref().map(|p| p.len() / f.rows);
    let mut rows = Vec::with_capacity(f.rows);
    for i in 0..f.rows {
        let row_probs = probabilities
            .as_ref()
            .zip(per_row)
            .map(|(p, n)| &p[i * n..(i + 1) * n]);
        let confidence = row_probs.map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        let prediction = match (&label, row_probs) {
            (Some(l), _) => json!(l[i]),
            // No label output: the most probable class.
            (None, Some(r)) => json!(
                r.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (j, &x)| if x > best.1 {
                        (j, x)
                    } else {
                        best
                    })
                    .0
            ),
            (None, None) => {
                return Err(InferError::Internal(
                    "the model gives neither a label nor probabilities".into(),
                ));
            }
        };
        rows.push(json!({"prediction": prediction, "confidence": confidence}));
    }
    let body = if f.single {
        let mut one = rows.pop().expect("one row");
        one["model_version"] = json!(model_version);
        one
    } else {
        json!({"predictions": rows, "model_version": model_version})
    };
    Ok(serde_json::to_vec(&body).expect("serializable"))
}

/// The same answer from a remote server's Open Inference Protocol JSON response.
pub fn respond_from_oip(body: &[u8], f: &Features, model_version: &str) -> Result<Vec<u8>, InferError> {
    let response = inference::protocol::decode_response(body, None)
        .map_err(|e| InferError::Internal(format!("upstream answered with an unreadable response: {e}")))?;
    let outputs: Vec<(String, Tensor)> = response.outputs.into_iter().map(|o| (o.name, o.tensor)).collect();
    respond(&outputs, f, model_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            version: "1".into(),
            platform: "test",
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::F32,
                shape: vec![-1, 2],
            }],
            outputs: vec![],
            batchable: true,
        }
    }

    #[test]
    fn one_row_and_many_rows() {
        let one = parse(br#"{"features": [1, 2.5]}"#).unwrap();
        assert_eq!((one.rows, one.cols, one.single), (1, 2, true));
        let many = parse(br#"{"features": [[1, 2], [3, 4], [5, 6]]}"#).unwrap();
        assert_eq!((many.rows, many.cols, many.single), (3, 2, false));
        let inputs = to_inputs(&meta(), &many).unwrap();
        assert_eq!(inputs[0].tensor.shape(), &[3, 2]);
    }

    #[test]
    fn bad_bodies() {
        for (body, want) in [
            (&br#"{"features": []}"#[..], "empty"),
            (br#"{"features": [[]]}"#, "list of numbers"),
            (br#"{"features": [[1, 2], [3]]}"#, "equal length"),
            (br#"{"features": [[1, 2], [3, 4, 5]]}"#, "equal length"),
            (br#"{"features": [1, [2]]}"#, "equal length"),
            (br#"{"features": [[1], 2]}"#, "equal length"),
            (br#"{"features": [[1, "a"]]}"#, "list of numbers"),
            (br#"{"features": 3}"#, "list of numbers"),
            (br#"{"features": ["a"]}"#, "list of numbers"),
            (br#"{"inputs": []}"#, "expected {\"features\""),
            (br#"nope"#, "invalid JSON"),
        ] {
            let err = parse(body).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        let three = parse(br#"{"features": [1, 2, 3]}"#).unwrap();
        assert!(
            to_inputs(&meta(), &three)
                .unwrap_err()
                .to_string()
                .contains("takes 2 features per row, got 3")
        );
    }

    #[test]
    fn answers_carry_label_and_confidence() {
        let f = parse(br#"{"features": [[1, 2], [3, 4]]}"#).unwrap();
        let outputs = vec![
            (
                "label".to_string(),
                Tensor::new(vec![2], TensorData::I64(vec![1, 0])).unwrap(),
            ),
            (
                "probabilities".to_string(),
                Tensor::new(vec![2, 2], TensorData::F32(vec![0.25, 0.75, 0.9, 0.1])).unwrap(),
            ),
        ];
        let v: serde_json::Value = serde_json::from_slice(&respond(&outputs, &f, "3").unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"predictions": [{"prediction": 1, "confidence": 0.75}, {"prediction": 0, "confidence": 0.8999999761581421}], "model_version": "3"})
        );
        let oip = json!({"outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.9, 0.1]}]});
        let v2: serde_json::Value =
            serde_json::from_slice(&respond_from_oip(oip.to_string().as_bytes(), &f, "3").unwrap()).unwrap();
        assert_eq!(v2["predictions"][0], json!({"prediction": 1, "confidence": 0.75}));
    }
}
