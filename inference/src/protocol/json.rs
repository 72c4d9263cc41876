//! Wire types of the Open Inference Protocol (KServe v2) REST API.
//!
//! `data` may be flat or nested to any depth (`[[1, 2], [3, 4]]`); it is flattened while
//! parsing, straight into the typed buffer ([`parse_data`]), without building a
//! `serde_json::Value` tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::tensor::{DataType, TensorData};
use crate::with_tensor_data;

/// Request- and tensor-level parameters. Only the binary-data extension's keys are read;
/// any other parameter is accepted and ignored, as the protocol asks.
#[derive(Debug, Default, Deserialize)]
pub struct Parameters {
    #[serde(default)]
    pub binary_data_size: Option<u64>,
    #[serde(default)]
    pub binary_data: Option<bool>,
    #[serde(default)]
    pub binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestJson<'a> {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    #[serde(borrow)]
    pub inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    pub outputs: Option<Vec<OutputRequestJson>>,
}

#[derive(Debug, Deserialize)]
pub struct InputJson<'a> {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// `data` as it stands in the body: parsed by [`parse_data`] once the datatype and the
    /// shape are known, straight into the typed buffer (JSON field order is free, so `data`
    /// may come before `datatype`).
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct OutputRequestJson {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// Why `data` did not make a buffer of the shape's element count.
#[derive(Debug, PartialEq, Eq)]
pub enum DataError {
    /// `data` holds this many elements, not the shape's count.
    Count(usize),
    /// Element `index` (shown as written) does not fit the datatype.
    Element { index: usize, value: String },
    /// Not numbers or booleans in arrays (strings, objects, bad JSON).
    Invalid(String),
}

/// Parses `data` (flat, or nested to any depth, in row-major order) into a buffer of `dtype`
/// holding exactly `count` elements, converting each value without changing its meaning (no
/// fraction into an integer, no out-of-range integer, no number into BOOL).
///
/// Memory: the buffer is sized by the elements `data` can hold (each takes at least two bytes
/// of JSON), never by the shape alone, and elements past `count` are only counted. Before,
/// `data` was first parsed into a list of 16-byte scalars and converted after: for a 4 MiB
/// body of small numbers that list reached 32 MiB (48 MiB while it grew).
pub fn parse_data(raw: &RawValue, dtype: DataType, count: usize) -> Result<TensorData, DataError> {
    macro_rules! typed {
        ($t:ty, $var:ident) => {{
            let mut out: Vec<$t> = Vec::with_capacity(count.min(raw.get().len() / 2 + 1));
            fill(raw, count, &mut out)?;
            TensorData::$var(out)
        }};
    }
    Ok(match dtype {
        DataType::Bool => typed!(bool, Bool),
        DataType::U8 => typed!(u8, U8),
        DataType::U16 => typed!(u16, U16),
        DataType::U32 => typed!(u32, U32),
        DataType::U64 => typed!(u64, U64),
        DataType::I8 => typed!(i8, I8),
        DataType::I16 => typed!(i16, I16),
        DataType::I32 => typed!(i32, I32),
        DataType::I64 => typed!(i64, I64),
        DataType::F32 => typed!(f32, F32),
        DataType::F64 => typed!(f64, F64),
    })
}

fn fill<T: Element>(raw: &RawValue, count: usize, out: &mut Vec<T>) -> Result<(), DataError> {
    let mut state = Fill {
        out,
        count,
        seen: 0,
        bad: None,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    (&mut state)
        .deserialize(&mut de)
        .map_err(|e| DataError::Invalid(e.to_string()))?;
    // The count is reported before a bad element, as a shape that does not fit the data is
    // the more basic mistake.
    if state.seen != count {
        return Err(DataError::Count(state.seen));
    }
    match state.bad {
        Some((index, value)) => Err(DataError::Element { index, value }),
        None => Ok(()),
    }
}

/// An element type, and how a JSON value becomes one (`None`: it does not fit).
trait Element: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_i64(v: i64) -> Option<Self>;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}

impl Element for bool {
    fn from_bool(b: bool) -> Option<Self> {
        Some(b)
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            // A whole number written as a float (`3.0`) is that integer.
            fn from_f64(v: f64) -> Option<Self> {
                (v.fract() == 0.0 && v.abs() < 1e19)
                    .then(|| <$t>::try_from(v as i128).ok())
                    .flatten()
            }
        }
    )*};
}
integer!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! float {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_i64(v: i64) -> Option<Self> {
                Some(v as $t)
            }
            fn from_u64(v: u64) -> Option<Self> {
                Some(v as $t)
            }
            fn from_f64(v: f64) -> Option<Self> {
                Some(v as $t)
            }
        }
    )*};
}
float!(f32, f64);

/// The parse in progress: elements are pushed up to `count`; past it, or after a bad one,
/// they are only counted.
struct Fill<'v, T> {
    out: &'v mut Vec<T>,
    count: usize,
    seen: usize,
    bad: Option<(usize, String)>,
}

impl<T: Element> Fill<'_, T> {
    fn push(&mut self, value: Option<T>, shown: impl FnOnce() -> String) {
        let index = self.seen;
        self.seen += 1;
        if index >= self.count || self.bad.is_some() {
            return;
        }
        match value {
            Some(v) => self.out.push(v),
            None => self.bad = Some((index, shown())),
        }
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for &mut Fill<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for &mut Fill<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers or booleans, flat or in nested arrays")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), || v.to_string());
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), || v.to_string());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), || v.to_string());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), || v.to_string());
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(
            "strings in `data` are BYTES tensors, which this server does not support",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }
}

/// Response tensor data, serialized from the typed buffer (floats via the shortest
/// representation that reads back to the same value).
pub struct DataRef<'a>(pub &'a TensorData);

impl Serialize for DataRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        with_tensor_data!(self.0, v => v.serialize(serializer))
    }
}

#[derive(Serialize)]
pub struct BinarySize {
    pub binary_data_size: usize,
}

#[derive(Serialize)]
pub struct OutputJson<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataRef<'a>>,
}

#[derive(Serialize)]
pub struct ResponseJson<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub id: &'a str,
    pub outputs: Vec<OutputJson<'a>>,
}

/// A response as a client reads it (the gateway, to compare a shadow's answer with the
/// primary's): outputs have the same shape as request inputs.
#[derive(Debug, Deserialize)]
pub struct ResponseReadJson<'a> {
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(borrow)]
    pub outputs: Vec<InputJson<'a>>,
}

/// A request as a client writes it: inputs have the same shape as response outputs.
#[derive(Serialize)]
pub struct RequestWriteJson<'a> {
    pub id: &'a str,
    pub inputs: Vec<OutputJson<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, dtype: DataType, count: usize) -> Result<TensorData, DataError> {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        parse_data(raw, dtype, count)
    }

    #[test]
    fn nested_and_flat_data_flatten_the_same() {
        let flat = parse("[1, 2.5, 3, 4]", DataType::F64, 4).unwrap();
        let nested = parse("[[1, 2.5], [[3], [4]]]", DataType::F64, 4).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat, TensorData::F64(vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(
            parse("true", DataType::Bool, 1).unwrap(),
            TensorData::Bool(vec![true])
        );
    }

    #[test]
    fn strings_are_refused() {
        let err = parse("[\"a\"]", DataType::F32, 1).unwrap_err();
        assert!(
            matches!(&err, DataError::Invalid(m) if m.contains("BYTES")),
            "{err:?}"
        );
    }

    #[test]
    fn big_integers_keep_their_value() {
        let data = parse("[9007199254740993, -9007199254740993]", DataType::I64, 2).unwrap();
        assert_eq!(data, TensorData::I64(vec![9007199254740993, -9007199254740993]));
        assert_eq!(
            parse("[18446744073709551615]", DataType::U64, 1).unwrap(),
            TensorData::U64(vec![u64::MAX])
        );
    }

    #[test]
    fn counts_and_bad_elements() {
        assert_eq!(parse("[1, 2, 3]", DataType::I32, 2), Err(DataError::Count(3)));
        assert_eq!(parse("[1]", DataType::I32, 2), Err(DataError::Count(1)));
        assert_eq!(
            parse("[1, 2.5]", DataType::I32, 2),
            Err(DataError::Element {
                index: 1,
                value: "2.5".into()
            })
        );
        // A wrong count is reported first, even when an element is bad too.
        assert_eq!(parse("[1.5, 2, 3]", DataType::I32, 2), Err(DataError::Count(3)));
        assert_eq!(
            parse("[3.0, -4]", DataType::I8, 2).unwrap(),
            TensorData::I8(vec![3, -4])
        );
    }

    #[test]
    fn a_huge_shape_does_not_size_the_buffer() {
        // The shape claims a billion elements; the buffer is sized by what `data` can hold.
        let raw: &RawValue = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(parse_data(raw, DataType::F64, 1 << 30), Err(DataError::Count(2)));
    }
}
