//! Turning an Open Inference Protocol request body into typed tensors, and outputs back into
//! a response body — JSON, or JSON plus raw tensors (the binary tensor data extension that
//! `tritonclient` uses by default).
//!
//! Binary extension, in short: the request carries `Inference-Header-Content-Length: N`; the
//! first N bytes of the body are the JSON header, the rest are the inputs' raw little-endian
//! bytes, one after another, in the order of the inputs that declare
//! `parameters.binary_data_size`. Outputs asked for with `parameters.binary_data: true` (or
//! all of them with the request parameter `binary_data_output: true`) come back the same way.

use crate::error::InferError;
use crate::model::{ModelMetadata, NamedTensor};
use crate::protocol::json::{
    BinarySize, DataError, DataRef, InputJson, OutputJson, RequestJson, RequestWriteJson, ResponseJson,
    ResponseReadJson, parse_data,
};
use crate::protocol::tensors::{
    first_duplicate, from_le_bytes, response_len_bound, tensor_head, to_le_bytes,
};
use crate::tensor::Tensor;

/// The header naming the JSON part's length in a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Outputs asked for by name (empty: all of them), each with its own binary choice.
    pub outputs: Vec<(String, Option<bool>)>,
    /// `parameters.binary_data_output`: the binary choice for outputs that do not make one.
    pub binary_output: bool,
}

/// An encoded response body. `json_len` is set when binary tensors follow the JSON.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_len: Option<usize>,
}

impl EncodedResponse {
    /// `application/json`, or `application/octet-stream` when raw tensors follow the JSON
    /// (then `Inference-Header-Content-Length` gives the JSON's length).
    pub fn content_type(&self) -> &'static str {
        content_type(self.json_len)
    }
}

/// The content type of an answer whose JSON is `json_len` bytes long when raw tensors follow
/// it ([`EncodedResponse::content_type`]).
pub fn content_type(json_len: Option<usize>) -> &'static str {
    if json_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    }
}

/// A decoded inference response.
#[derive(Debug)]
pub struct InferResponse {
    pub model_version: Option<String>,
    pub outputs: Vec<NamedTensor>,
}

/// Splits a binary-extension body into its JSON header and the raw tensor bytes.
fn split_body<'a>(body: &'a [u8], header_length: Option<&str>) -> Result<(&'a [u8], &'a [u8]), InferError> {
    match header_length {
        None => Ok((body, &[][..])),
        Some(value) => {
            let n: usize = value.trim().parse().map_err(|_| {
                InferError::bad_request(format!(
                    "Inference-Header-Content-Length {value:?} is not a byte count"
                ))
            })?;
            if n > body.len() {
                return Err(InferError::bad_request(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            Ok(body.split_at(n))
        }
    }
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` value.
pub fn decode_request(body: &[u8], header_length: Option<&str>) -> Result<InferRequest, InferError> {
    let (json, mut binary) = split_body(body, header_length)?;
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| InferError::bad_request(format!("invalid inference request JSON: {e}")))?;
    let RequestJson {
        id,
        parameters,
        inputs,
        outputs,
    } = request;
    if inputs.is_empty() {
        return Err(InferError::bad_request("the request has no inputs"));
    }
    // A name listed twice is refused before any data is decoded: each output listed is
    // encoded into the answer, so 30,000 copies of one name in a 1 MB request made a 40 MB
    // answer (and binary outputs, gigabytes).
    if let Some(name) = first_duplicate(inputs.iter().map(|i| i.name.as_str())) {
        return Err(InferError::bad_request(format!(
            "input {name:?} is given more than once"
        )));
    }
    let outputs = outputs.unwrap_or_default();
    if let Some(name) = first_duplicate(outputs.iter().map(|o| o.name.as_str())) {
        return Err(InferError::bad_request(format!(
            "output {name:?} is listed more than once in `outputs`"
        )));
    }
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        decoded.push(decode_input(input, &mut binary, "input")?);
    }
    if !binary.is_empty() {
        return Err(InferError::bad_request(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    Ok(InferRequest {
        id,
        inputs: decoded,
        outputs: outputs
            .into_iter()
            .map(|o| (o.name, o.parameters.and_then(|p| p.binary_data)))
            .collect(),
        binary_output: parameters.and_then(|p| p.binary_data_output).unwrap_or(false),
    })
}

/// Decodes a response body (JSON, or JSON plus binary outputs).
pub fn decode_response(body: &[u8], header_length: Option<&str>) -> Result<InferResponse, InferError> {
    let (json, mut binary) = split_body(body, header_length)?;
    let response: ResponseReadJson = serde_json::from_slice(json)
        .map_err(|e| InferError::bad_request(format!("invalid inference response JSON: {e}")))?;
    let outputs = response
        .outputs
        .into_iter()
        .map(|o| decode_input(o, &mut binary, "output"))
        .collect::<Result<_, _>>()?;
    Ok(InferResponse {
        model_version: response.model_version,
        outputs,
    })
}

/// Encodes inputs as a JSON inference request body (what a remote pool is sent when the
/// gateway itself makes the request, as for shadows of the simple endpoint).
pub fn encode_request(id: &str, inputs: &[NamedTensor]) -> Vec<u8> {
    let request = RequestWriteJson {
        id,
        inputs: tensors_json(inputs),
    };
    serde_json::to_vec(&request).expect("request types always serialize")
}

/// Named tensors as the protocol's JSON objects (`{name, datatype, shape, data}`).
pub fn tensors_json(tensors: &[NamedTensor]) -> Vec<OutputJson<'_>> {
    tensors
        .iter()
        .map(|t| OutputJson {
            name: &t.name,
            datatype: t.tensor.dtype().as_str(),
            shape: t.tensor.shape(),
            parameters: None,
            data: Some(DataRef(t.tensor.data())),
        })
        .collect()
}

fn decode_input(input: InputJson, binary: &mut &[u8], role: &str) -> Result<NamedTensor, InferError> {
    let InputJson {
        name,
        shape,
        datatype,
        parameters,
        data,
    } = input;
    let (dtype, shape, count) = tensor_head(role, &name, &datatype, &shape)?;
    let binary_size = parameters.and_then(|p| p.binary_data_size);
    let data = match (data, binary_size) {
        (Some(_), Some(_)) => {
            return Err(InferError::bad_request(format!(
                "{role} {name:?} has both `data` and `binary_data_size`; give one"
            )));
        }
        (None, None) => {
            return Err(InferError::bad_request(format!("{role} {name:?} has no `data`")));
        }
        (Some(raw), None) => match parse_data(raw, dtype, count) {
            Ok(data) => data,
            Err(DataError::Count(n)) => {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: shape {shape:?} needs {count} elements but `data` has {n}"
                )));
            }
            Err(DataError::Element { index, value }) => {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: element {index} ({value}) is not a valid {dtype}"
                )));
            }
            Err(DataError::Invalid(e)) => {
                return Err(InferError::bad_request(format!("{role} {name:?}: `data`: {e}")));
            }
        },
        (None, Some(size)) => {
            let want = count.saturating_mul(dtype.size());
            if size as usize != want {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: binary_data_size is {size} but shape {shape:?} of {dtype} needs {want} bytes"
                )));
            }
            if binary.len() < want {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: needs {want} bytes of binary data but only {} remain in the body",
                    binary.len()
                )));
            }
            let (bytes, rest) = binary.split_at(want);
            *binary = rest;
            from_le_bytes(role, &name, dtype, bytes)?
        }
    };
    let tensor =
        Tensor::new(shape, data).map_err(|e| InferError::bad_request(format!("{role} {name:?}: {e}")))?;
    Ok(NamedTensor { name, tensor })
}

/// Which outputs to return and whether each goes binary, checked against the model before
/// any inference is done (an unknown output name is the caller's mistake: 400).
pub fn select_outputs(
    meta: &ModelMetadata,
    request: &InferRequest,
) -> Result<Vec<(usize, bool)>, InferError> {
    if request.outputs.is_empty() {
        return Ok((0..meta.outputs.len())
            .map(|i| (i, request.binary_output))
            .collect());
    }
    request
        .outputs
        .iter()
        .map(|(name, binary)| Ok((meta.output_index(name)?, binary.unwrap_or(request.binary_output))))
        .collect()
}

/// Encodes the selected outputs as the response body, refusing (413) an answer that could
/// be larger than `max_bytes` before anything is written. `model_name` and `model_version`
/// are what the caller asked for (a gateway answers with the public name it routed).
pub fn encode_response(
    meta: &ModelMetadata,
    model_name: &str,
    model_version: &str,
    id: &str,
    selected: &[(usize, bool)],
    outputs: &[Tensor],
    max_bytes: usize,
) -> Result<EncodedResponse, InferError> {
    if response_len_bound(meta, id, selected, outputs) > max_bytes {
        return Err(InferError::AnswerTooLarge { limit: max_bytes });
    }
    let mut binary = Vec::new();
    let mut json_outputs = Vec::with_capacity(selected.len());
    for &(index, as_binary) in selected {
        let tensor = &outputs[index];
        let spec = &meta.outputs[index];
        let (parameters, data) = if as_binary {
            let start = binary.len();
            to_le_bytes(tensor.data(), &mut binary);
            (
                Some(BinarySize {
                    binary_data_size: binary.len() - start,
                }),
                None,
            )
        } else {
            (None, Some(DataRef(tensor.data())))
        };
        json_outputs.push(OutputJson {
            name: &spec.name,
            datatype: tensor.dtype().as_str(),
            shape: tensor.shape(),
            parameters,
            data,
        });
    }
    let response = ResponseJson {
        model_name,
        model_version,
        id,
        outputs: json_outputs,
    };
    let mut body = serde_json::to_vec(&response).expect("response types always serialize");
    if binary.is_empty() && selected.iter().all(|&(_, b)| !b) {
        return Ok(EncodedResponse { body, json_len: None });
    }
    let json_len = body.len();
    body.extend_from_slice(&binary);
    Ok(EncodedResponse {
        body,
        json_len: Some(json_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DataType, TensorData};

    fn decode(body: &str) -> Result<InferRequest, InferError> {
        decode_request(body.as_bytes(), None)
    }

    #[test]
    fn responses_decode_from_json_and_binary() {
        let meta = crate::model::ModelMetadata {
            name: "m".into(),
            version: "3".into(),
            platform: "test",
            inputs: vec![],
            outputs: ["label", "probabilities"]
                .iter()
                .map(|n| crate::model::TensorSpec {
                    name: n.to_string(),
                    datatype: DataType::F32,
                    shape: vec![-1],
                })
                .collect(),
            batchable: true,
        };
        let outputs = vec![
            Tensor::new(vec![2], TensorData::I64(vec![1, 0])).unwrap(),
            Tensor::new(vec![2, 2], TensorData::F32(vec![0.25, 0.75, 0.9, 0.1])).unwrap(),
        ];
        for selected in [
            vec![(0, false), (1, false)],
            vec![(0, true), (1, false)],
            vec![(0, true), (1, true)],
        ] {
            let encoded = encode_response(&meta, "m", "3", "id", &selected, &outputs, 1 << 20).unwrap();
            assert!(encoded.body.len() <= response_len_bound(&meta, "id", &selected, &outputs));
            let length = encoded.json_len.map(|n| n.to_string());
            let decoded = decode_response(&encoded.body, length.as_deref()).unwrap();
            assert_eq!(decoded.model_version.as_deref(), Some("3"));
            let got: Vec<&Tensor> = decoded.outputs.iter().map(|o| &o.tensor).collect();
            assert_eq!(got, outputs.iter().collect::<Vec<_>>(), "{selected:?}");
        }
        let too_small = encode_response(&meta, "m", "3", "id", &[(0, false), (1, false)], &outputs, 100);
        assert_eq!(too_small.unwrap_err().status(), 413);
        let err = decode_response(
            br#"{"outputs":[{"name":"p","shape":[2],"datatype":"FP32","data":[1]}]}"#,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("output \"p\""), "{err}");
    }

    #[test]
    fn encoded_requests_decode_to_the_same_inputs() {
        let inputs = vec![NamedTensor {
            name: "input".into(),
            tensor: Tensor::new(vec![1, 3], TensorData::F32(vec![0.1, -2.5, 3e-8])).unwrap(),
        }];
        let decoded = decode_request(&encode_request("r1", &inputs), None).unwrap();
        assert_eq!(decoded.id.as_deref(), Some("r1"));
        assert_eq!(decoded.inputs, inputs);
    }

    #[test]
    fn json_conversions() {
        let r =
            decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3.0,-4]]}]}"#)
                .unwrap();
        assert_eq!(r.inputs[0].tensor.data(), &TensorData::I32(vec![1, 2, 3, -4]));
        let r =
            decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP64","data":[1,2.5,-3]}]}"#).unwrap();
        assert_eq!(r.inputs[0].tensor.data(), &TensorData::F64(vec![1.0, 2.5, -3.0]));
        // Found by the property test below: read to the nearest float, as written.
        let r = decode(
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[-1.8733927149884165e+299]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.inputs[0].tensor.data(),
            &TensorData::F64(vec![-1.8733927149884165e299])
        );
        let r = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[true]}]}"#).unwrap();
        assert_eq!(r.inputs[0].tensor.data(), &TensorData::Bool(vec![true]));
    }

    #[test]
    fn values_that_do_not_fit_are_refused() {
        for (datatype, data, want) in [
            ("INT32", "[1.5]", "element 0 (1.5) is not a valid INT32"),
            ("INT8", "[300]", "element 0 (300) is not a valid INT8"),
            ("UINT8", "[-1]", "element 0 (-1) is not a valid UINT8"),
            ("BOOL", "[1]", "element 0 (1) is not a valid BOOL"),
            ("FP32", "[true]", "element 0 (true) is not a valid FP32"),
        ] {
            let body =
                format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{datatype}","data":{data}}}]}}"#);
            let err = decode(&body).unwrap_err();
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn names_listed_twice_are_refused_before_decoding() {
        let dup_output = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y"},{"name":"z"},{"name":"y"}]}"#;
        let err = decode(dup_output).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string().contains("output \"y\" is listed more than once"),
            "{err}"
        );
        let dup_input = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[2]}]}"#;
        let err = decode(dup_input).unwrap_err();
        assert!(
            err.to_string().contains("input \"x\" is given more than once"),
            "{err}"
        );
    }

    #[test]
    fn binary_inputs_and_outputs_round_trip() {
        let header = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"y","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        body.extend_from_slice(&7i64.to_le_bytes());
        let r = decode_request(&body, Some(&header.len().to_string())).unwrap();
        assert_eq!(r.inputs[0].tensor.data(), &TensorData::F32(vec![1.5, -2.0]));
        assert_eq!(r.inputs[1].tensor.data(), &TensorData::I64(vec![7]));
        assert_eq!(r.outputs, vec![("y".to_string(), Some(true))]);

        // Short and surplus binary data are both errors.
        let short = decode_request(&body[..body.len() - 1], Some(&header.len().to_string())).unwrap_err();
        assert!(short.to_string().contains("only 7 remain"), "{short}");
        let mut long = body.clone();
        long.push(0);
        let surplus = decode_request(&long, Some(&header.len().to_string())).unwrap_err();
        assert!(surplus.to_string().contains("no input claims them"), "{surplus}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use crate::tensor::{DataType, TensorData};

        /// A datatype, and values of it (as JSON text and as the buffer they must become).
        fn typed(len: usize) -> impl Strategy<Value = (DataType, Vec<String>, TensorData)> {
            macro_rules! ints {
                ($t:ty, $var:ident, $dt:ident) => {
                    prop::collection::vec(any::<$t>(), len).prop_map(|v| {
                        (
                            DataType::$dt,
                            v.iter().map(|x| x.to_string()).collect(),
                            TensorData::$var(v),
                        )
                    })
                };
            }
            prop_oneof![
                ints!(u8, U8, U8),
                ints!(i8, I8, I8),
                ints!(u16, U16, U16),
                ints!(i16, I16, I16),
                ints!(u32, U32, U32),
                ints!(i32, I32, I32),
                ints!(u64, U64, U64),
                ints!(i64, I64, I64),
                prop::collection::vec(any::<bool>(), len).prop_map(|v| (
                    DataType::Bool,
                    v.iter().map(|x| x.to_string()).collect(),
                    TensorData::Bool(v)
                )),
                prop::collection::vec(-1e30f32..1e30f32, len).prop_map(|v| (
                    DataType::F32,
                    v.iter().map(|x| serde_json::to_string(x).unwrap()).collect(),
                    TensorData::F32(v)
                )),
                prop::collection::vec(-1e300f64..1e300f64, len).prop_map(|v| (
                    DataType::F64,
                    v.iter().map(|x| serde_json::to_string(x).unwrap()).collect(),
                    TensorData::F64(v)
                )),
            ]
        }

        fn case() -> impl Strategy<Value = (Vec<usize>, DataType, Vec<String>, TensorData, bool)> {
            (1usize..5, 0usize..6)
                .prop_flat_map(|(rows, cols)| (Just(vec![rows, cols]), typed(rows * cols), any::<bool>()))
                .prop_map(|(shape, (dtype, texts, data), nested)| (shape, dtype, texts, data, nested))
        }

        fn json_body(shape: &[usize], dtype: DataType, texts: &[String], nested: bool) -> String {
            let data = if nested && shape[1] > 0 {
                let rows: Vec<String> = texts
                    .chunks(shape[1])
                    .map(|r| format!("[{}]", r.join(",")))
                    .collect();
                format!("[{}]", rows.join(","))
            } else {
                format!("[{}]", texts.join(","))
            };
            format!(
                r#"{{"inputs":[{{"data":{data},"name":"x","shape":[{},{}],"datatype":"{}"}}]}}"#,
                shape[0],
                shape[1],
                dtype.as_str()
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// JSON (flat or nested, `data` before or after `datatype`) and binary bodies of
            /// the same values decode to the same tensor, exactly.
            #[test]
            fn json_and_binary_decode_to_the_values((shape, dtype, texts, data, nested) in case()) {
                let body = json_body(&shape, dtype, &texts, nested);
                let decoded = decode_request(body.as_bytes(), None).unwrap();
                prop_assert_eq!(decoded.inputs[0].tensor.shape(), &shape[..]);
                prop_assert_eq!(decoded.inputs[0].tensor.data(), &data);

                let mut raw = Vec::new();
                to_le_bytes(&data, &mut raw);
                let header = format!(
                    r#"{{"inputs":[{{"name":"x","shape":[{},{}],"datatype":"{}","parameters":{{"binary_data_size":{}}}}}]}}"#,
                    shape[0], shape[1], dtype.as_str(), raw.len()
                );
                let mut binary = header.clone().into_bytes();
                binary.extend(&raw);
                let decoded = decode_request(&binary, Some(&header.len().to_string())).unwrap();
                prop_assert_eq!(decoded.inputs[0].tensor.data(), &data);
            }

            /// A body with any byte changed, dropped or added decodes, or is refused with a
            /// 400; it never panics.
            #[test]
            fn damaged_bodies_are_refused_never_panic(
                (shape, dtype, texts, _data, nested) in case(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                how in 0u8..3,
                length in prop::option::of(0usize..400),
            ) {
                let mut body = json_body(&shape, dtype, &texts, nested).into_bytes();
                let i = at.index(body.len());
                match how {
                    0 => body[i] = byte,
                    1 => { body.remove(i); }
                    _ => body.insert(i, byte),
                }
                let length = length.map(|n| n.to_string());
                if let Err(e) = decode_request(&body, length.as_deref()) {
                    prop_assert_eq!(e.status(), 400);
                }
            }

            /// A shape that does not fit the data is refused with both counts, however large
            /// the shape claims to be (nothing is sized from it).
            #[test]
            fn shapes_that_do_not_fit_are_refused(rows in 1u64..u64::MAX / 2, extra in 1usize..4) {
                let body = format!(
                    r#"{{"inputs":[{{"name":"x","shape":[{rows},{extra}],"datatype":"FP32","data":[1,2,3]}}]}}"#
                );
                if rows * extra as u64 != 3 {
                    let e = decode_request(body.as_bytes(), None).unwrap_err();
                    prop_assert_eq!(e.status(), 400);
                }
            }
        }
    }
}
