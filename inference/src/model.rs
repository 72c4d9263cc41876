//! A model's signature, read from the ONNX graph itself, and the checks a request must pass
//! before it is queued: names, datatypes, shapes, batch sizes, finite values.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::ValueType;

use crate::error::InferError;
use crate::tensor::{DataType, Tensor};
use crate::{runtime, shapes};

/// One input or output of a model: `shape` uses -1 for a dimension the graph leaves open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// What a client needs to know to call a model, as the graph declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub version: String,
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every input and output has an open first dimension, so requests can be stacked along
    /// it. Models that are not batchable run one request per ORT call.
    pub batchable: bool,
}

/// A model file that could not be turned into a session.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot load model {model} from {path}: {reason}")]
pub struct LoadError {
    pub model: String,
    pub path: PathBuf,
    pub reason: String,
}

/// A request's input: its name and its tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// Inputs that passed every check, in the model's input order.
#[derive(Debug)]
pub struct CheckedInputs {
    pub tensors: Vec<Tensor>,
    /// Rows along the batch dimension (1 for models that are not batchable).
    pub rows: usize,
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?}", self.name, self.datatype, self.shape)
    }
}

impl ModelMetadata {
    /// Checks a request's inputs against the model and orders them as the model wants them.
    ///
    /// `reject_non_finite`: NaN and infinity are refused for float inputs. The bundled models
    /// (scalers, MLPs, trees) give meaningless answers for them, so this is the default.
    pub fn check_inputs(
        &self,
        inputs: Vec<NamedTensor>,
        reject_non_finite: bool,
    ) -> Result<CheckedInputs, InferError> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for NamedTensor { name, tensor } in inputs {
            let Some(index) = self.inputs.iter().position(|s| s.name == name) else {
                return Err(InferError::bad_request(format!(
                    "unexpected input {name:?}: model {} takes {}",
                    self.name,
                    self.input_names()
                )));
            };
            if slots[index].is_some() {
                return Err(InferError::bad_request(format!(
                    "input {name:?} is given more than once"
                )));
            }
            slots[index] = Some(tensor);
        }
        let mut tensors = Vec::with_capacity(slots.len());
        let mut rows: Option<usize> = None;
        for (spec, slot) in self.inputs.iter().zip(slots) {
            let Some(tensor) = slot else {
                return Err(InferError::bad_request(format!(
                    "missing input {:?}: model {} takes {}",
                    spec.name,
                    self.name,
                    self.input_names()
                )));
            };
            check_one(spec, &tensor, reject_non_finite)?;
            if self.batchable {
                let r = tensor.shape()[0];
                match rows {
                    None => rows = Some(r),
                    Some(prev) if prev != r => {
                        return Err(InferError::bad_request(format!(
                            "inputs disagree on the batch size: {prev} rows and {r} rows"
                        )));
                    }
                    Some(_) => {}
                }
            }
            tensors.push(tensor);
        }
        Ok(CheckedInputs {
            tensors,
            rows: if self.batchable { rows.unwrap_or(1) } else { 1 },
        })
    }

    fn input_names(&self) -> String {
        let names: Vec<String> = self.inputs.iter().map(|s| format!("{:?}", s.name)).collect();
        names.join(", ")
    }

    /// The index of the output called `name`, or a 400 naming the outputs that exist.
    pub fn output_index(&self, name: &str) -> Result<usize, InferError> {
        self.outputs.iter().position(|s| s.name == name).ok_or_else(|| {
            let names: Vec<String> = self.outputs.iter().map(|s| format!("{:?}", s.name)).collect();
            InferError::bad_request(format!(
                "unknown output {name:?}: model {} has {}",
                self.name,
                names.join(", ")
            ))
        })
    }
}

fn check_one(spec: &TensorSpec, tensor: &Tensor, reject_non_finite: bool) -> Result<(), InferError> {
    let name = &spec.name;
    if tensor.dtype() != spec.datatype {
        return Err(InferError::bad_request(format!(
            "input {name:?} has datatype {} but the model expects {}",
            tensor.dtype(),
            spec.datatype
        )));
    }
    let shape = tensor.shape();
    let fits = shape.len() == spec.shape.len()
        && shape
            .iter()
            .zip(&spec.shape)
            .all(|(&got, &want)| want < 0 || got as i64 == want);
    if !fits {
        return Err(InferError::bad_request(format!(
            "input {name:?} has shape {shape:?} but the model expects {:?} (-1: any size)",
            spec.shape
        )));
    }
    if shape.first() == Some(&0) {
        return Err(InferError::bad_request(format!(
            "input {name:?} has no rows (shape {shape:?})"
        )));
    }
    if reject_non_finite && let Some(i) = tensor.data().first_non_finite() {
        return Err(InferError::bad_request(format!(
            "input {name:?} element {i} is NaN or infinite (after conversion to {}); \
             the model cannot take non-finite values",
            spec.datatype
        )));
    }
    Ok(())
}

/// Opens an ORT session on `path`. One session per pool worker: ORT sessions are run with
/// `&mut` in `ort`, and one session per thread also keeps each worker's scratch memory hot.
pub fn open_session(path: &Path, intra_threads: usize) -> Result<Session, String> {
    commit(builder(intra_threads)?, path)
}

fn builder(intra_threads: usize) -> Result<SessionBuilder, String> {
    let env = runtime::environment()?;
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    builder
        // One intra-op thread runs the graph on the calling worker thread: parallelism comes
        // from the pool's workers and from batching, not from ORT's own thread pool, which
        // would fight the server's threads for the same cores.
        .with_intra_threads(intra_threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())
}

/// Model files larger than this are opened as written, without [`shapes`]' pass: the pass
/// holds the file's bytes (and ONNX Runtime its parsed copy) while the session is made, where
/// ONNX Runtime alone reads the file as it parses. The pipelines the pass helps (a scaler
/// before small dense layers) are far smaller: the bundled MLPs are under 100 KiB.
pub const SHAPES_MAX_BYTES: u64 = 64 << 20;

/// Opens the model, with the output shapes its exporter left out ([`shapes`]) so that ONNX
/// Runtime fuses the nodes after them.
fn commit(builder: SessionBuilder, path: &Path) -> Result<Session, String> {
    commit_shaped(builder, path, shaped_bytes(path, SHAPES_MAX_BYTES))
}

/// The model's bytes with the shapes added ([`shapes::with_ml_shapes`]), for `.onnx` files of
/// at most `max_bytes` (an `.ort` file is not a protobuf); `None` otherwise.
fn shaped_bytes(path: &Path, max_bytes: u64) -> Option<(Vec<u8>, usize)> {
    if path.extension().is_none_or(|e| e != "onnx") {
        return None;
    }
    let size = std::fs::metadata(path).ok()?.len();
    if size > max_bytes {
        tracing::debug!(model = %path.display(), size, max_bytes, "large model: opened as written, no shapes added");
        return None;
    }
    std::fs::read(path).ok().and_then(|b| shapes::with_ml_shapes(&b))
}

/// Opens the model from `shaped` (its bytes with the shapes added, and how many), or from its
/// file when there are none or ONNX Runtime refuses them.
fn commit_shaped(
    mut builder: SessionBuilder,
    path: &Path,
    shaped: Option<(Vec<u8>, usize)>,
) -> Result<Session, String> {
    if let Some((bytes, added)) = shaped {
        match builder.commit_from_memory(&bytes) {
            Ok(session) => {
                tracing::debug!(model = %path.display(), added, "shapes of ai.onnx.ml outputs given to ONNX Runtime");
                return Ok(session);
            }
            // Not expected (the shapes are their inputs'), but the model as written still
            // serves: opened from its file below, with ONNX Runtime's own error if it fails.
            Err(e) => {
                tracing::warn!(model = %path.display(), error = %e, "the model with its scalers' shapes did not load; opened as written")
            }
        }
    }
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

/// Reads a model's signature from an open session.
pub fn metadata_from_session(session: &Session, name: &str, version: &str) -> Result<ModelMetadata, String> {
    let specs = |outlets: &[ort::value::Outlet], what: &str| -> Result<Vec<TensorSpec>, String> {
        outlets
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => {
                    let datatype = DataType::from_ort(*ty).ok_or_else(|| {
                        format!(
                            "{what} {:?} has element type {ty}, which the server cannot carry",
                            o.name()
                        )
                    })?;
                    Ok(TensorSpec {
                        name: o.name().to_string(),
                        datatype,
                        shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
                    })
                }
                other => Err(format!(
                    "{what} {:?} is {other:?}, not a tensor (for scikit-learn classifiers, \
                     export with options={{'zipmap': False}})",
                    o.name()
                )),
            })
            .collect()
    };
    let inputs = specs(session.inputs(), "input")?;
    let outputs = specs(session.outputs(), "output")?;
    let batchable = inputs
        .iter()
        .chain(&outputs)
        .all(|s| s.shape.first() == Some(&-1));
    Ok(ModelMetadata {
        name: name.to_string(),
        version: version.to_string(),
        platform: "onnxruntime_onnx",
        inputs,
        outputs,
        batchable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn meta() -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            version: "1".into(),
            platform: "onnxruntime_onnx",
            inputs: vec![
                TensorSpec {
                    name: "a".into(),
                    datatype: DataType::F32,
                    shape: vec![-1, 2],
                },
                TensorSpec {
                    name: "b".into(),
                    datatype: DataType::I64,
                    shape: vec![-1],
                },
            ],
            outputs: vec![TensorSpec {
                name: "y".into(),
                datatype: DataType::F32,
                shape: vec![-1],
            }],
            batchable: true,
        }
    }

    fn named(name: &str, shape: Vec<usize>, data: TensorData) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(shape, data).unwrap(),
        }
    }

    /// The graph ONNX Runtime runs for `model` (its optimizer's output), as operator names.
    fn optimized(model: &str, with_shapes: bool) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(model);
        let out = std::env::temp_dir().join(format!("optimized-{}-{with_shapes}.onnx", std::process::id()));
        let mut builder = builder(1).unwrap().with_optimized_model_path(&out).unwrap();
        match with_shapes {
            true => commit(builder, &path),
            false => builder.commit_from_file(&path).map_err(|e| e.to_string()),
        }
        .unwrap();
        let ops = shapes::op_types(&std::fs::read(&out).unwrap());
        std::fs::remove_file(&out).unwrap();
        ops
    }

    #[test]
    fn given_the_scalers_shape_onnx_runtime_fuses_the_mlps_layers() {
        let count = |ops: &[String], op: &str| ops.iter().filter(|o| *o == op).count();
        let plain = optimized("breast-cancer/1/model.onnx", false);
        assert_eq!(
            (count(&plain, "MatMul"), count(&plain, "FusedGemm")),
            (3, 0),
            "{plain:?}"
        );
        let shaped = optimized("breast-cancer/1/model.onnx", true);
        assert_eq!(
            (count(&shaped, "MatMul"), count(&shaped, "FusedGemm")),
            (0, 3),
            "{shaped:?}"
        );
        assert_eq!((plain.len(), shaped.len()), (16, 10));
        // A model with nothing to add is opened from its file as before.
        let forest = optimized("breast-cancer/3/model.onnx", true);
        assert_eq!(forest, ["TreeEnsembleClassifier"]);
    }

    #[test]
    fn only_models_up_to_the_size_limit_get_the_shapes_pass() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/breast-cancer/1/model.onnx");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < SHAPES_MAX_BYTES);
        let (bytes, added) = shaped_bytes(&path, size).expect("at the limit: shapes added");
        assert!(added > 0 && bytes.len() as u64 > size);
        assert_eq!(
            shaped_bytes(&path, size - 1),
            None,
            "one byte over: opened as written"
        );
        let session = commit_shaped(builder(1).unwrap(), &path, shaped_bytes(&path, size - 1)).unwrap();
        assert_eq!(session.outputs().len(), 2);
    }

    #[test]
    fn a_model_whose_shaped_bytes_are_refused_opens_from_its_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/breast-cancer/1/model.onnx");
        // Bytes ONNX Runtime cannot parse stand for a refusal of the shaped model.
        let refused = Some((b"\x3a\xff\xff\xff".to_vec(), 1));
        let session = commit_shaped(builder(1).unwrap(), &path, refused).unwrap();
        let inputs: Vec<_> = session.inputs().iter().map(|i| i.name().to_string()).collect();
        assert_eq!(inputs, ["input"]);
    }

    #[test]
    fn inputs_are_reordered_and_counted() {
        let checked = meta()
            .check_inputs(
                vec![
                    named("b", vec![3], TensorData::I64(vec![1, 2, 3])),
                    named("a", vec![3, 2], TensorData::F32(vec![0.0; 6])),
                ],
                true,
            )
            .unwrap();
        assert_eq!(checked.rows, 3);
        assert_eq!(checked.tensors[0].dtype(), DataType::F32);
    }

    #[test]
    fn each_mismatch_has_its_message() {
        let m = meta();
        let a = || named("a", vec![1, 2], TensorData::F32(vec![0.0; 2]));
        let b = || named("b", vec![1], TensorData::I64(vec![0]));
        let cases: Vec<(Vec<NamedTensor>, &str)> = vec![
            (vec![a()], "missing input \"b\""),
            (
                vec![a(), b(), named("c", vec![1], TensorData::I64(vec![0]))],
                "unexpected input \"c\"",
            ),
            (vec![a(), a(), b()], "more than once"),
            (
                vec![named("a", vec![1, 2], TensorData::F64(vec![0.0; 2])), b()],
                "datatype FP64 but the model expects FP32",
            ),
            (
                vec![named("a", vec![1, 3], TensorData::F32(vec![0.0; 3])), b()],
                "shape [1, 3]",
            ),
            (
                vec![named("a", vec![2], TensorData::F32(vec![0.0; 2])), b()],
                "shape [2]",
            ),
            (
                vec![named("a", vec![2, 2], TensorData::F32(vec![0.0; 4])), b()],
                "disagree on the batch size",
            ),
            (
                vec![
                    named("a", vec![0, 2], TensorData::F32(vec![])),
                    named("b", vec![0], TensorData::I64(vec![])),
                ],
                "no rows",
            ),
            (
                vec![
                    named("a", vec![1, 2], TensorData::F32(vec![0.0, f32::INFINITY])),
                    b(),
                ],
                "element 1 is NaN or infinite",
            ),
        ];
        for (inputs, want) in cases {
            let err = m.check_inputs(inputs, true).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn non_finite_allowed_when_configured() {
        let inputs = vec![
            named("a", vec![1, 2], TensorData::F32(vec![f32::NAN, 0.0])),
            named("b", vec![1], TensorData::I64(vec![0])),
        ];
        assert!(meta().check_inputs(inputs, false).is_ok());
    }

    #[test]
    fn unknown_output_names_the_outputs() {
        let err = meta().output_index("z").unwrap_err();
        assert!(err.to_string().contains("\"y\""), "{err}");
        assert_eq!(meta().output_index("y").unwrap(), 0);
    }
}
