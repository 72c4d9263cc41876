//! The Open Inference Protocol's gRPC form (`inference.GRPCInferenceService`): its messages,
//! generated from `inference/proto/grpc_predict_v2.proto` at build time by a pure-Rust
//! protobuf compiler (`protox`: nothing is downloaded), and the codec between them and the
//! same typed requests and outputs the REST codec uses. Errors carry the same text as REST's
//! and map to the matching gRPC code ([`status`]).
//!
//! Inputs come either as `raw_input_contents` (one little-endian buffer per input, what
//! `tritonclient.grpc` sends) or in the typed `contents` field of their datatype. Outputs go
//! back in `raw_output_contents` (what Triton does, and what its clients read first), or in
//! `contents` for an output requested with the parameter `binary_data: false`.

use std::collections::HashMap;

use crate::error::InferError;
use crate::model::{ModelMetadata, NamedTensor};
use crate::protocol::codec::InferRequest;
use crate::protocol::metadata::{ModelMetadataAnswer, ServerMetadata};
use crate::protocol::tensors::{
    first_duplicate, from_le_bytes, response_len_bound, tensor_head, to_le_bytes,
};
use crate::tensor::{DataType, Tensor, TensorData};

/// The generated messages, client and server.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("inference");
}

use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;

/// The service's full name, as health checks name it.
pub const SERVICE: &str = "inference.GRPCInferenceService";

/// The gRPC status an error is answered with, with the REST error's text. A retryable
/// refusal carries `retry-after` (seconds) in its metadata, as REST's header.
pub fn status(e: &InferError) -> tonic::Status {
    status_of(e.status(), e.to_string(), e.retry_after())
}

/// The gRPC code of an HTTP error status, as gRPC's own HTTP mapping and the gateway's
/// refusals want it: a missing or unknown key is UNAUTHENTICATED, a key that may not is
/// PERMISSION_DENIED, a rate limit or a size RESOURCE_EXHAUSTED, a full queue or an upstream
/// that cannot answer UNAVAILABLE, a deadline DEADLINE_EXCEEDED.
pub fn code_of(http_status: u16) -> tonic::Code {
    match http_status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        405 | 415 => tonic::Code::Unimplemented,
        408 | 504 => tonic::Code::DeadlineExceeded,
        409 => tonic::Code::Aborted,
        413 | 429 | 431 => tonic::Code::ResourceExhausted,
        502 | 503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// A status with REST's message, `retry-after` (seconds) in its metadata when there is one.
pub fn status_of(
    http_status: u16,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> tonic::Status {
    let mut status = tonic::Status::new(code_of(http_status), message);
    if let Some(after) = retry_after {
        status
            .metadata_mut()
            .insert("retry-after", after.as_secs().max(1).into());
    }
    status
}

/// The HTTP status of a code an upstream gRPC server answered with, for the gateway's
/// callers (REST's status, or the same code again over gRPC): the caller's mistakes keep
/// their meaning (INVALID_ARGUMENT is 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429), an
/// upstream that cannot answer is 503 or 504, anything else is the upstream's failure (502).
pub fn http_status_of(code: tonic::Code) -> u16 {
    use tonic::Code::*;
    match code {
        Ok => 200,
        InvalidArgument | OutOfRange | FailedPrecondition => 400,
        NotFound => 404,
        ResourceExhausted => 429,
        Unavailable => 503,
        DeadlineExceeded => 504,
        _ => 502,
    }
}

/// One message as gRPC frames it on the wire: uncompressed, its length in 4 big-endian
/// bytes, then the message (what the gateway writes to its callers and its `grpc` pools).
pub fn frame(message: &impl prost::Message) -> bytes::Bytes {
    use bytes::BufMut;
    let len = message.encoded_len();
    let mut out = bytes::BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    message
        .encode(&mut out)
        .expect("the buffer has the message's length");
    out.freeze()
}

/// A `grpc-timeout` value (an integer of at most 8 digits and a unit: H M S m u n).
pub fn parse_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (n, unit) = value.split_at(value.len().checked_sub(1)?);
    if n.is_empty() || n.len() > 8 {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A duration as a `grpc-timeout` value: microseconds while they fit in 8 digits, then
/// milliseconds, then seconds.
pub fn timeout_value(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    if micros < 100_000_000 {
        format!("{}u", micros.max(1))
    } else if d.as_millis() < 100_000_000 {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// When to give up on a call whose client gives up after `limit`: a tenth early, at least
/// 5 ms, so that the answer (DEADLINE_EXCEEDED with its reason) reaches the client before
/// its own timer ends the call as CANCELLED.
pub fn early(limit: std::time::Duration) -> std::time::Duration {
    limit.saturating_sub((limit / 10).max(std::time::Duration::from_millis(5)))
}

fn bool_param(parameters: &HashMap<String, pb::InferParameter>, name: &str) -> Option<bool> {
    match parameters.get(name)?.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Some(b),
        _ => None,
    }
}

/// A `ModelInferRequest` as the typed request REST bodies decode into, with the same checks
/// and messages. `binary_output` (REST's choice of raw outputs) is true unless the request's
/// parameter `binary_data_output` is false: raw is gRPC's usual form.
pub fn decode_request(request: pb::ModelInferRequest) -> Result<InferRequest, InferError> {
    let pb::ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = request;
    if inputs.is_empty() {
        return Err(InferError::bad_request("the request has no inputs"));
    }
    if let Some(name) = first_duplicate(inputs.iter().map(|i| i.name.as_str())) {
        return Err(InferError::bad_request(format!(
            "input {name:?} is given more than once"
        )));
    }
    if let Some(name) = first_duplicate(outputs.iter().map(|o| o.name.as_str())) {
        return Err(InferError::bad_request(format!(
            "output {name:?} is listed more than once in `outputs`"
        )));
    }
    if !raw_input_contents.is_empty() && raw_input_contents.len() != inputs.len() {
        return Err(InferError::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, or none",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    let mut decoded = Vec::with_capacity(inputs.len());
    for input in inputs {
        decoded.push(decode_input(input, raw.next(), "input")?);
    }
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        inputs: decoded,
        outputs: outputs
            .into_iter()
            .map(|o| {
                let binary = bool_param(&o.parameters, "binary_data");
                (o.name, binary)
            })
            .collect(),
        binary_output: bool_param(&parameters, "binary_data_output").unwrap_or(true),
    })
}

fn decode_input(
    input: InferInputTensor,
    raw: Option<Vec<u8>>,
    role: &str,
) -> Result<NamedTensor, InferError> {
    let InferInputTensor {
        name,
        datatype,
        shape,
        contents,
        ..
    } = input;
    let (dtype, shape, count) = tensor_head(role, &name, &datatype, &shape)?;
    let data = match (raw, contents) {
        (Some(_), Some(_)) => {
            return Err(InferError::bad_request(format!(
                "{role} {name:?} has both `contents` and raw_input_contents; give one"
            )));
        }
        (None, None) => {
            return Err(InferError::bad_request(format!(
                "{role} {name:?} has no `contents` (and the request no raw_input_contents)"
            )));
        }
        (Some(bytes), None) => {
            let want = count.saturating_mul(dtype.size());
            if bytes.len() != want {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: raw_input_contents has {} bytes but shape {shape:?} of {dtype} needs {want}",
                    bytes.len()
                )));
            }
            from_le_bytes(role, &name, dtype, &bytes)?
        }
        (None, Some(c)) => typed_contents(role, &name, dtype, c)?,
    };
    if data.len() != count {
        return Err(InferError::bad_request(format!(
            "{role} {name:?}: shape {shape:?} needs {count} elements but `contents` has {}",
            data.len()
        )));
    }
    let tensor =
        Tensor::new(shape, data).map_err(|e| InferError::bad_request(format!("{role} {name:?}: {e}")))?;
    Ok(NamedTensor { name, tensor })
}

/// The typed field of `dtype` (small integers travel widened, as the specification says);
/// values that do not fit the datatype are refused with REST's message.
fn typed_contents(
    role: &str,
    name: &str,
    dtype: DataType,
    c: pb::InferTensorContents,
) -> Result<TensorData, InferError> {
    fn narrow<W: Copy + std::fmt::Display, N: TryFrom<W>>(
        role: &str,
        name: &str,
        dtype: DataType,
        wide: Vec<W>,
    ) -> Result<Vec<N>, InferError> {
        wide.into_iter()
            .enumerate()
            .map(|(index, v)| {
                N::try_from(v).map_err(|_| {
                    InferError::bad_request(format!(
                        "{role} {name:?}: element {index} ({v}) is not a valid {dtype}"
                    ))
                })
            })
            .collect()
    }
    let field = match dtype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
    };
    let given = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    if let Some((other, _)) = given.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(InferError::bad_request(format!(
            "{role} {name:?}: a {dtype} tensor's elements go in `contents.{field}`, not `{other}`"
        )));
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => TensorData::I8(narrow(role, name, dtype, c.int_contents)?),
        DataType::I16 => TensorData::I16(narrow(role, name, dtype, c.int_contents)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => TensorData::U8(narrow(role, name, dtype, c.uint_contents)?),
        DataType::U16 => TensorData::U16(narrow(role, name, dtype, c.uint_contents)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
    })
}

fn contents_of(data: &TensorData) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::I8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::I16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
        TensorData::I32(v) => c.int_contents = v.clone(),
        TensorData::I64(v) => c.int64_contents = v.clone(),
        TensorData::U8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::U16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
        TensorData::U32(v) => c.uint_contents = v.clone(),
        TensorData::U64(v) => c.uint64_contents = v.clone(),
        TensorData::F32(v) => c.fp32_contents = v.clone(),
        TensorData::F64(v) => c.fp64_contents = v.clone(),
    }
    c
}

/// The selected outputs as a `ModelInferResponse`, refused (RESOURCE_EXHAUSTED) when the
/// answer could be larger than `max_bytes`, as REST's. Raw outputs fill
/// `raw_output_contents` in their order; when any output is raw, the specification wants
/// every output there, so `contents` are used only when no output is raw.
pub fn encode_response(
    meta: &ModelMetadata,
    model_name: &str,
    model_version: &str,
    id: &str,
    selected: &[(usize, bool)],
    outputs: &[Tensor],
    max_bytes: usize,
) -> Result<pb::ModelInferResponse, InferError> {
    if response_len_bound(meta, id, selected, outputs) > max_bytes {
        return Err(InferError::AnswerTooLarge { limit: max_bytes });
    }
    let raw = selected.iter().any(|&(_, b)| b);
    let mut response = pb::ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id: id.to_string(),
        ..Default::default()
    };
    for &(index, _) in selected {
        let tensor = &outputs[index];
        let contents = if raw {
            let mut bytes = Vec::with_capacity(tensor.data().len() * tensor.dtype().size());
            to_le_bytes(tensor.data(), &mut bytes);
            response.raw_output_contents.push(bytes);
            None
        } else {
            Some(contents_of(tensor.data()))
        };
        response.outputs.push(InferOutputTensor {
            name: meta.outputs[index].name.clone(),
            datatype: tensor.dtype().as_str().to_string(),
            shape: tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents,
        });
    }
    Ok(response)
}

/// A `ModelInferResponse` back into named tensors (a gRPC pool's answer, a client's check).
pub fn decode_response(response: pb::ModelInferResponse) -> Result<Vec<NamedTensor>, InferError> {
    let pb::ModelInferResponse {
        outputs,
        raw_output_contents,
        ..
    } = response;
    if !raw_output_contents.is_empty() && raw_output_contents.len() != outputs.len() {
        return Err(InferError::bad_request(format!(
            "raw_output_contents has {} entries for {} outputs",
            raw_output_contents.len(),
            outputs.len()
        )));
    }
    let mut raw = raw_output_contents.into_iter();
    outputs
        .into_iter()
        .map(|o| {
            let input = InferInputTensor {
                name: o.name,
                datatype: o.datatype,
                shape: o.shape,
                parameters: o.parameters,
                contents: o.contents,
            };
            decode_input(input, raw.next(), "output")
        })
        .collect()
}

/// Named tensors as a `ModelInferRequest` with raw contents (what the gateway sends a gRPC
/// pool, and what the tests and the load generator send).
pub fn encode_request(model: &str, version: &str, id: &str, inputs: &[NamedTensor]) -> pb::ModelInferRequest {
    let mut request = pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: id.to_string(),
        ..Default::default()
    };
    for t in inputs {
        request.inputs.push(InferInputTensor {
            name: t.name.clone(),
            datatype: t.tensor.dtype().as_str().to_string(),
            shape: t.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
        let mut bytes = Vec::with_capacity(t.tensor.data().len() * t.tensor.dtype().size());
        to_le_bytes(t.tensor.data(), &mut bytes);
        request.raw_input_contents.push(bytes);
    }
    request
}

pub fn server_metadata(server: &str) -> pb::ServerMetadataResponse {
    let m = ServerMetadata::of(server);
    pb::ServerMetadataResponse {
        name: m.name,
        version: m.version,
        extensions: m.extensions,
    }
}

pub fn model_metadata(meta: &ModelMetadata, name: &str, versions: Vec<String>) -> pb::ModelMetadataResponse {
    let m = ModelMetadataAnswer::of(meta, name, versions);
    let tensors = |t: Vec<crate::protocol::metadata::TensorMetadata>| {
        t.into_iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

/// A `ModelMetadataResponse` (a gRPC pool's upstream) as the REST answer it mirrors, which
/// [`ModelMetadataAnswer::into_model`] turns into the signature requests are checked against.
pub fn metadata_answer(m: pb::ModelMetadataResponse) -> ModelMetadataAnswer {
    let tensors = |t: Vec<pb::model_metadata_response::TensorMetadata>| {
        t.into_iter()
            .map(|t| crate::protocol::metadata::TensorMetadata {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect()
    };
    ModelMetadataAnswer {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

/// A gRPC request's version field: empty means the latest, as a REST path without one.
pub fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_in_at_most_eight_digits() {
        use std::time::Duration;
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(150),
            Duration::from_secs(99),
            Duration::from_secs(100_000),
            Duration::from_secs(99_999_999),
        ] {
            let v = timeout_value(d);
            assert!(v.len() <= 9, "{v}");
            let back = parse_timeout(&v).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(1),
                "{d:?} -> {v} -> {back:?}"
            );
        }
        // Longer than gRPC can say: its longest.
        assert_eq!(timeout_value(Duration::from_secs(400_000_000)), "99999999S");
        assert_eq!(parse_timeout("123456789m"), None);
        assert_eq!(parse_timeout("S"), None);
        assert_eq!(early(Duration::from_millis(150)), Duration::from_millis(135));
        assert_eq!(early(Duration::from_millis(20)), Duration::from_millis(15));
    }

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<pb::InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_contents_decode_to_the_same_tensor() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = decode_request(request(vec![input("x", "FP32", vec![2, 2], None)], vec![raw])).unwrap();
        let typed = pb::InferTensorContents {
            fp32_contents: values.to_vec(),
            ..Default::default()
        };
        let b = decode_request(request(vec![input("x", "FP32", vec![2, 2], Some(typed))], vec![])).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].tensor.shape(), &[2, 2]);
        assert!(a.binary_output, "raw outputs unless asked otherwise");
    }

    #[test]
    fn bad_requests_get_rest_messages() {
        let err = |r| decode_request(r).unwrap_err().to_string();
        let fp32 = |v: Vec<f32>| pb::InferTensorContents {
            fp32_contents: v,
            ..Default::default()
        };
        assert_eq!(
            err(request(
                vec![input("x", "FP32", vec![1, 3], Some(fp32(vec![1.0])))],
                vec![]
            )),
            "input \"x\": shape [1, 3] needs 3 elements but `contents` has 1"
        );
        assert_eq!(
            err(request(
                vec![input("x", "FP32", vec![1, 2], None)],
                vec![vec![0; 4]]
            )),
            "input \"x\": raw_input_contents has 4 bytes but shape [1, 2] of FP32 needs 8"
        );
        assert_eq!(
            err(request(vec![input("x", "FP16", vec![1], None)], vec![vec![0; 2]])),
            "input \"x\": datatype FP16 is not supported by this server (supported: BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP32, FP64)"
        );
        assert_eq!(
            err(request(vec![input("x", "FP32", vec![-1], None)], vec![vec![]])),
            "input \"x\": shape [-1] has a negative dimension"
        );
        let ints = pb::InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        assert_eq!(
            err(request(
                vec![input("x", "INT8", vec![2], Some(ints.clone()))],
                vec![]
            )),
            "input \"x\": element 1 (300) is not a valid INT8"
        );
        assert_eq!(
            err(request(vec![input("x", "FP32", vec![2], Some(ints))], vec![])),
            "input \"x\": a FP32 tensor's elements go in `contents.fp32_contents`, not `int_contents`"
        );
        assert_eq!(err(request(vec![], vec![])), "the request has no inputs");
        assert_eq!(
            err(request(
                vec![
                    input("x", "FP32", vec![1], None),
                    input("y", "FP32", vec![1], None)
                ],
                vec![vec![0; 4]]
            )),
            "raw_input_contents has 1 entries for 2 inputs; give one per input, or none"
        );
    }

    #[test]
    fn errors_map_to_grpc_codes_with_the_rest_text() {
        let overloaded = InferError::Overloaded {
            model: "m".into(),
            capacity: 4,
        };
        let s = status(&overloaded);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), overloaded.to_string());
        assert_eq!(s.metadata().get("retry-after").unwrap(), "1");
        assert_eq!(
            status(&InferError::bad_request("x")).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            status(&InferError::NotFound("x".into())).code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            status(&InferError::BodyTimeout { limit_ms: 1 }).code(),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(
            status(&InferError::TooManyRows { rows: 2, limit: 1 }).code(),
            tonic::Code::ResourceExhausted
        );
    }
}
