//! Typed tensors as they travel between the protocol and ONNX Runtime: a concrete shape and a
//! flat, row-major buffer of one element type.

use std::fmt;

/// Calls `$body` with `$v` bound to the typed `Vec` inside a [`TensorData`], whatever its type.
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($v) => $body,
            $crate::tensor::TensorData::U8($v) => $body,
            $crate::tensor::TensorData::U16($v) => $body,
            $crate::tensor::TensorData::U32($v) => $body,
            $crate::tensor::TensorData::U64($v) => $body,
            $crate::tensor::TensorData::I8($v) => $body,
            $crate::tensor::TensorData::I16($v) => $body,
            $crate::tensor::TensorData::I32($v) => $body,
            $crate::tensor::TensorData::I64($v) => $body,
            $crate::tensor::TensorData::F32($v) => $body,
            $crate::tensor::TensorData::F64($v) => $body,
        }
    };
}

/// Element types, named as the Open Inference Protocol names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

pub const SUPPORTED_DATATYPES: &str =
    "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP32, FP64";

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
        }
    }

    /// Parses a protocol datatype name; the error says which names are supported.
    pub fn parse(name: &str) -> Result<DataType, String> {
        Ok(match name {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::U8,
            "UINT16" => DataType::U16,
            "UINT32" => DataType::U32,
            "UINT64" => DataType::U64,
            "INT8" => DataType::I8,
            "INT16" => DataType::I16,
            "INT32" => DataType::I32,
            "INT64" => DataType::I64,
            "FP32" => DataType::F32,
            "FP64" => DataType::F64,
            "FP16" | "BF16" | "BYTES" => {
                return Err(format!(
                    "datatype {name} is not supported by this server (supported: {SUPPORTED_DATATYPES})"
                ));
            }
            other => {
                return Err(format!(
                    "unknown datatype {other:?} (supported: {SUPPORTED_DATATYPES})"
                ));
            }
        })
    }

    /// Bytes per element in the binary tensor extension (BOOL is one byte).
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    pub fn from_ort(ty: ort::value::TensorElementType) -> Option<DataType> {
        use ort::value::TensorElementType as T;
        Some(match ty {
            T::Bool => DataType::Bool,
            T::Uint8 => DataType::U8,
            T::Uint16 => DataType::U16,
            T::Uint32 => DataType::U32,
            T::Uint64 => DataType::U64,
            T::Int8 => DataType::I8,
            T::Int16 => DataType::I16,
            T::Int32 => DataType::I32,
            T::Int64 => DataType::I64,
            T::Float32 => DataType::F32,
            T::Float64 => DataType::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A flat, row-major element buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl TensorData {
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `dtype` with room for `capacity` elements.
    pub fn with_capacity(dtype: DataType, capacity: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
        }
    }

    /// `len` zeros (false for BOOL) of `dtype`.
    pub fn zeros(dtype: DataType, len: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(vec![false; len]),
            DataType::U8 => TensorData::U8(vec![0; len]),
            DataType::U16 => TensorData::U16(vec![0; len]),
            DataType::U32 => TensorData::U32(vec![0; len]),
            DataType::U64 => TensorData::U64(vec![0; len]),
            DataType::I8 => TensorData::I8(vec![0; len]),
            DataType::I16 => TensorData::I16(vec![0; len]),
            DataType::I32 => TensorData::I32(vec![0; len]),
            DataType::I64 => TensorData::I64(vec![0; len]),
            DataType::F32 => TensorData::F32(vec![0.0; len]),
            DataType::F64 => TensorData::F64(vec![0.0; len]),
        }
    }

    /// Appends `other` (same type) to `self`. Returns false, changing nothing, on a type mismatch.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => { a.extend_from_slice(b); true })*
                    _ => false,
                }
            };
        }
        ext!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F32, F64)
    }

    /// Elements `start..end` as a new buffer.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        macro_rules! sl {
            ($($var:ident),*) => {
                match self { $(TensorData::$var(v) => TensorData::$var(v[start..end].to_vec()),)* }
            };
        }
        sl!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F32, F64)
    }

    /// The index of the first NaN or infinity, for float buffers.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::F32(v) => v.iter().position(|x| !x.is_finite()),
            TensorData::F64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }
}

/// A tensor with a concrete shape. Invariant: `data.len()` is the product of `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that the element count matches the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, String> {
        let expected = element_count(&shape)
            .ok_or_else(|| format!("shape {shape:?} has more elements than can be addressed"))?;
        if expected != data.len() {
            return Err(format!(
                "shape {shape:?} needs {expected} elements but {} were given",
                data.len()
            ));
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// Elements per row: the product of every dimension after the first.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// The product of `shape`, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_data() {
        assert!(Tensor::new(vec![2, 3], TensorData::F32(vec![0.0; 6])).is_ok());
        let err = Tensor::new(vec![2, 3], TensorData::F32(vec![0.0; 5])).unwrap_err();
        assert!(err.contains("needs 6 elements but 5"), "{err}");
        assert!(Tensor::new(vec![usize::MAX, 3], TensorData::F32(vec![])).is_err());
    }

    #[test]
    fn datatype_names_round_trip() {
        for name in SUPPORTED_DATATYPES.split(", ") {
            assert_eq!(DataType::parse(name).unwrap().as_str(), name);
        }
        assert!(DataType::parse("FP16").unwrap_err().contains("not supported"));
        assert!(DataType::parse("fp32").unwrap_err().contains("unknown datatype"));
    }

    #[test]
    fn extend_and_slice() {
        let mut a = TensorData::I64(vec![1, 2]);
        assert!(a.extend_from(&TensorData::I64(vec![3])));
        assert!(!a.extend_from(&TensorData::F32(vec![3.0])));
        assert_eq!(a, TensorData::I64(vec![1, 2, 3]));
        assert_eq!(a.slice(1, 3), TensorData::I64(vec![2, 3]));
    }

    #[test]
    fn non_finite_is_found() {
        assert_eq!(TensorData::F32(vec![1.0, f32::NAN]).first_non_finite(), Some(1));
        assert_eq!(TensorData::F64(vec![f64::INFINITY]).first_non_finite(), Some(0));
        assert_eq!(TensorData::I32(vec![1]).first_non_finite(), None);
    }
}
