//! What the protocol says about servers and models, typed both ways (Serialize to answer,
//! Deserialize to read another server's answer): server metadata, model metadata, model
//! readiness, and Triton's model configuration (`/config`, which `tritonclient` reads).
//! Not on the inference path: owned strings, no tuning.

use serde::{Deserialize, Serialize};

use crate::model::{ModelMetadata, TensorSpec};
use crate::tensor::DataType;

/// The protocol extensions both servers implement.
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_configuration"];

/// `GET /v2`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

impl ServerMetadata {
    /// This program, under the name `server` (`inference-server`, `gateway`).
    pub fn of(server: &str) -> ServerMetadata {
        ServerMetadata {
            name: server.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// One tensor of a model's signature; `-1` is a dimension of any size.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelMetadataAnswer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadataAnswer {
    /// A model's metadata under the name it is asked by (the gateway answers for a route,
    /// whose name may differ from the model's), with the versions served.
    pub fn of(meta: &ModelMetadata, name: &str, versions: Vec<String>) -> ModelMetadataAnswer {
        let tensors = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.as_str().to_string(),
                    shape: s.shape.clone(),
                })
                .collect()
        };
        ModelMetadataAnswer {
            name: name.to_string(),
            versions,
            platform: meta.platform.to_string(),
            inputs: tensors(&meta.inputs),
            outputs: tensors(&meta.outputs),
        }
    }

    /// Another server's answer for `version` of a model, as the signature requests are
    /// checked against (a remote pool's model). Batchable when every tensor's first
    /// dimension is `-1`.
    pub fn into_model(self, version: &str, platform: &'static str) -> Result<ModelMetadata, String> {
        let specs = |tensors: Vec<TensorMetadata>| -> Result<Vec<TensorSpec>, String> {
            tensors
                .into_iter()
                .map(|t| {
                    Ok(TensorSpec {
                        datatype: DataType::parse(&t.datatype)?,
                        name: t.name,
                        shape: t.shape,
                    })
                })
                .collect()
        };
        let inputs = specs(self.inputs)?;
        let outputs = specs(self.outputs)?;
        let batchable = inputs
            .iter()
            .chain(&outputs)
            .all(|s| s.shape.first() == Some(&-1));
        Ok(ModelMetadata {
            name: self.name,
            version: version.to_string(),
            platform,
            inputs,
            outputs,
            batchable,
        })
    }
}

/// `GET /v2/models/{m}[/versions/{v}]/ready`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelReady {
    pub name: String,
    pub version: String,
    pub ready: bool,
}

/// Triton's model configuration (`GET /v2/models/{m}/config`): with `max_batch_size` > 0
/// the first dimension is the batch and `dims` leave it out, as Triton's clients expect.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub platform: String,
    pub backend: String,
    pub max_batch_size: usize,
    pub input: Vec<ConfigTensor>,
    pub output: Vec<ConfigTensor>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigTensor {
    pub name: String,
    /// `TYPE_FP32`, …
    pub data_type: String,
    pub dims: Vec<i64>,
}

impl ModelConfig {
    pub fn of(meta: &ModelMetadata, max_batch: usize) -> ModelConfig {
        let tensors = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| ConfigTensor {
                    name: s.name.clone(),
                    data_type: format!("TYPE_{}", s.datatype.as_str()),
                    dims: if meta.batchable {
                        s.shape[1..].to_vec()
                    } else {
                        s.shape.clone()
                    },
                })
                .collect()
        };
        ModelConfig {
            name: meta.name.clone(),
            platform: meta.platform.to_string(),
            backend: "onnxruntime".to_string(),
            max_batch_size: if meta.batchable { max_batch } else { 0 },
            input: tensors(&meta.inputs),
            output: tensors(&meta.outputs),
        }
    }
}

/// The JSON text of an answer (these types always serialize).
pub fn to_json<T: Serialize>(answer: &T) -> String {
    serde_json::to_string(answer).expect("protocol answers always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            version: "3".into(),
            platform: "onnxruntime_onnx",
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::F32,
                shape: vec![-1, 4],
            }],
            outputs: vec![TensorSpec {
                name: "label".into(),
                datatype: DataType::I64,
                shape: vec![-1],
            }],
            batchable: true,
        }
    }

    /// What one server writes, another reads back into the same signature.
    #[test]
    fn model_metadata_round_trips() {
        let text = to_json(&ModelMetadataAnswer::of(&meta(), "m", vec!["3".into()]));
        let read: ModelMetadataAnswer = serde_json::from_str(&text).unwrap();
        let back = read.into_model("3", "onnxruntime_onnx").unwrap();
        assert_eq!(back.inputs, meta().inputs);
        assert_eq!(back.outputs, meta().outputs);
        assert!(back.batchable);
    }

    #[test]
    fn an_unknown_datatype_is_refused() {
        let text = r#"{"name":"m","inputs":[{"name":"x","datatype":"FP9","shape":[1]}],"outputs":[]}"#;
        let read: ModelMetadataAnswer = serde_json::from_str(text).unwrap();
        assert!(read.into_model("1", "remote").is_err());
    }

    #[test]
    fn the_config_leaves_the_batch_dimension_out() {
        let c = ModelConfig::of(&meta(), 32);
        assert_eq!(c.max_batch_size, 32);
        assert_eq!(c.input[0].dims, vec![4]);
        assert_eq!(c.input[0].data_type, "TYPE_FP32");
    }
}
