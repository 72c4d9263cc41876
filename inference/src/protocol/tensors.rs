//! What both wire formats (JSON in [`super::codec`], gRPC in [`super::grpc`]) share: a
//! tensor's datatype, shape and element count with the protocol's messages, raw
//! little-endian tensor bytes, names given twice, and how large an answer can be.

use crate::error::InferError;
use crate::model::ModelMetadata;
use crate::tensor::{DataType, Tensor, TensorData, element_count};

/// The first name that appears twice. Few names, so sorted copies beat a hash set.
pub(crate) fn first_duplicate<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut sorted: Vec<&str> = names.collect();
    if sorted.len() < 2 {
        return None;
    }
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A tensor's datatype, shape and element count as the wire gives them (JSON or gRPC), with
/// the protocol's messages for a datatype, a negative dimension or a size it cannot take.
pub(crate) fn tensor_head(
    role: &str,
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> Result<(DataType, Vec<usize>, usize), InferError> {
    let dtype =
        DataType::parse(datatype).map_err(|e| InferError::bad_request(format!("{role} {name:?}: {e}")))?;
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            InferError::bad_request(format!(
                "{role} {name:?}: shape {shape:?} has a negative dimension"
            ))
        })?;
    let count = element_count(&dims)
        .ok_or_else(|| InferError::bad_request(format!("{role} {name:?}: shape {shape:?} is too large")))?;
    Ok((dtype, dims, count))
}

pub(crate) fn from_le_bytes(
    role: &str,
    name: &str,
    dtype: DataType,
    bytes: &[u8],
) -> Result<TensorData, InferError> {
    macro_rules! le {
        ($t:ty, $var:ident) => {
            TensorData::$var(
                bytes
                    .chunks_exact(size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of the type's size")))
                    .collect(),
            )
        };
    }
    Ok(match dtype {
        DataType::Bool => {
            if let Some(i) = bytes.iter().position(|&b| b > 1) {
                return Err(InferError::bad_request(format!(
                    "{role} {name:?}: BOOL element {i} is byte {}, not 0 or 1",
                    bytes[i]
                )));
            }
            TensorData::Bool(bytes.iter().map(|&b| b == 1).collect())
        }
        DataType::U8 => TensorData::U8(bytes.to_vec()),
        DataType::U16 => le!(u16, U16),
        DataType::U32 => le!(u32, U32),
        DataType::U64 => le!(u64, U64),
        DataType::I8 => TensorData::I8(bytes.iter().map(|&b| b as i8).collect()),
        DataType::I16 => le!(i16, I16),
        DataType::I32 => le!(i32, I32),
        DataType::I64 => le!(i64, I64),
        DataType::F32 => le!(f32, F32),
        DataType::F64 => le!(f64, F64),
    })
}

pub(crate) fn to_le_bytes(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I8(v) => out.extend(v.iter().map(|&b| b as u8)),
        TensorData::U16(v) => le!(v),
        TensorData::U32(v) => le!(v),
        TensorData::U64(v) => le!(v),
        TensorData::I16(v) => le!(v),
        TensorData::I32(v) => le!(v),
        TensorData::I64(v) => le!(v),
        TensorData::F32(v) => le!(v),
        TensorData::F64(v) => le!(v),
    }
}

/// The most bytes the selected outputs can take in an answer: binary outputs exactly, JSON
/// ones at the longest each element can be written, plus the fields around them.
pub fn response_len_bound(
    meta: &ModelMetadata,
    id: &str,
    selected: &[(usize, bool)],
    outputs: &[Tensor],
) -> usize {
    let mut total = 128 + meta.name.len() + id.len() * 6;
    for &(index, as_binary) in selected {
        let Some(tensor) = outputs.get(index) else {
            continue;
        };
        let per_element = if as_binary {
            tensor.dtype().size()
        } else {
            json_element_len(tensor.dtype()) + 1
        };
        total = total
            .saturating_add(tensor.data().len().saturating_mul(per_element))
            .saturating_add(96 + meta.outputs[index].name.len() * 6 + tensor.shape().len() * 21);
    }
    total
}

/// The longest a JSON number of `dtype` is written (serde_json's shortest round-trip form).
fn json_element_len(dtype: DataType) -> usize {
    match dtype {
        DataType::Bool => 5,
        DataType::U8 | DataType::I8 => 4,
        DataType::U16 | DataType::I16 => 6,
        DataType::U32 | DataType::I32 => 11,
        DataType::U64 | DataType::I64 => 20,
        DataType::F32 => 16,
        DataType::F64 => 24,
    }
}
