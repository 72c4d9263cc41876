//! Wire types of the Open Inference Protocol (KServe v2) REST API.
//!
//! `data` may be flat or nested to any depth (`[[1, 2], [3, 4]]`); it is flattened while
//! parsing, straight into scalars, without building a `serde_json::Value` tree.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::tensor::TensorData;
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
pub struct RequestJson {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<InputJson>,
    #[serde(default)]
    pub outputs: Option<Vec<OutputRequestJson>>,
}

#[derive(Debug, Deserialize)]
pub struct InputJson {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    #[serde(default)]
    pub data: Option<FlatData>,
}

#[derive(Debug, Deserialize)]
pub struct OutputRequestJson {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// One JSON scalar from `data`, kept as parsed so that integers are not rounded through f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::UInt(u) => write!(f, "{u}"),
            Scalar::Float(x) => write!(f, "{x}"),
        }
    }
}

/// `data`, flattened in row-major order.
#[derive(Debug, Default, PartialEq)]
pub struct FlatData(pub Vec<Scalar>);

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        Flatten { out: &mut out }.deserialize(deserializer)?;
        Ok(FlatData(out))
    }
}

struct Flatten<'a> {
    out: &'a mut Vec<Scalar>,
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers or booleans, flat or in nested arrays")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push(Scalar::Bool(v));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.out.push(Scalar::Int(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.out.push(Scalar::UInt(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.out.push(Scalar::Float(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(
            "strings in `data` are BYTES tensors, which this server does not support",
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(hint) = seq.size_hint() {
            self.out.reserve(hint);
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out })?.is_some() {}
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
pub struct ResponseReadJson {
    #[serde(default)]
    pub model_version: Option<String>,
    pub outputs: Vec<InputJson>,
}

/// A request as a client writes it: inputs have the same shape as response outputs.
#[derive(Serialize)]
pub struct RequestWriteJson<'a> {
    pub id: &'a str,
    pub inputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
pub struct TensorMetadataJson<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [i64],
}

#[derive(Serialize)]
pub struct ModelMetadataJson<'a> {
    pub name: &'a str,
    pub versions: Vec<String>,
    pub platform: &'a str,
    pub inputs: Vec<TensorMetadataJson<'a>>,
    pub outputs: Vec<TensorMetadataJson<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_flatten_the_same() {
        let flat: FlatData = serde_json::from_str("[1, 2.5, 3, 4]").unwrap();
        let nested: FlatData = serde_json::from_str("[[1, 2.5], [[3], [4]]]").unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.0[1], Scalar::Float(2.5));
        let scalar: FlatData = serde_json::from_str("true").unwrap();
        assert_eq!(scalar.0, vec![Scalar::Bool(true)]);
    }

    #[test]
    fn strings_are_refused() {
        let err = serde_json::from_str::<FlatData>("[\"a\"]").unwrap_err();
        assert!(err.to_string().contains("BYTES"), "{err}");
    }

    #[test]
    fn big_integers_keep_their_value() {
        let data: FlatData = serde_json::from_str("[9007199254740993, -9007199254740993]").unwrap();
        assert_eq!(
            data.0,
            vec![Scalar::UInt(9007199254740993), Scalar::Int(-9007199254740993)]
        );
    }
}
