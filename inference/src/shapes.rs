//! Shapes an exporter left out of a graph, given to ONNX Runtime so that it can fuse what
//! follows.
//!
//! ONNX has no shape inference for the `ai.onnx.ml` operators scikit-learn pipelines start
//! with (`Scaler` for a `StandardScaler`, `Normalizer`, `Imputer`, `Binarizer`), and skl2onnx
//! writes no shape for their outputs. Without one, ONNX Runtime cannot apply its fusions to
//! the nodes after them: in the bundled breast-cancer/1 (a `StandardScaler` and an MLP) every
//! `MatMul`, `Add` and activation stayed a node of its own, 16 nodes in all; with the
//! scaler's output shape (the shape of its input: these operators work element by element)
//! the same graph runs as 10, the three layers as `FusedGemm`s, with the same outputs (Python's
//! onnxruntime, 200 random rows: equal bit for bit). Measured with `pool_batching` (`inference/benches`) on one core, the build before
//! this module against the build with it, alternating (a one-off on an AMD EPYC KVM guest,
//! 2026-12-07): one request in flight, 5 rounds of 3 s, CPU per request 13.4–15.4 µs
//! (median 14.1) against 10.6–17.2 (11.1); 64 in flight batched by 32, 3 rounds of 2 s,
//! 1.47–1.95 µs against 1.29–1.55. At a moderate rate, where requests run alone, the model's
//! fixed cost per run is most of what it costs a request.
//!
//! The shapes are added without rewriting the model: a serialized protobuf message followed by
//! another of the same type parses as their merge, and a repeated field's elements are
//! appended. So the file's bytes are kept as they are (fields this reader does not know
//! included) and a `ModelProto` holding only the graph's new `value_info` entries is written
//! after them. Only the few fields needed are read (`prost`, already in the tree for gRPC):
//! a model whose initializers live in external files is left alone, since a model given from
//! memory has no directory to find them in.

use std::collections::HashMap;

use prost::Message;

/// The `ai.onnx.ml` operators whose output 0 has the shape of their input 0, and the element
/// type of that output (`None`: the input's).
const SAME_SHAPE: &[(&str, Option<i32>)] = &[
    ("Scaler", Some(FLOAT)),
    ("Normalizer", Some(FLOAT)),
    ("Imputer", None),
    ("Binarizer", None),
];

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;
const ML_DOMAIN: &str = "ai.onnx.ml";

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(string, tag = "7")]
    domain: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int32, tag = "14")]
    data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorType>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorType {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// The model's bytes with the shapes of its same-shape `ai.onnx.ml` outputs added, and how
/// many were added; `None` when there is nothing to add (or the bytes do not parse here:
/// ONNX Runtime then reports the problem from the file as before).
pub fn with_ml_shapes(model: &[u8]) -> Option<(Vec<u8>, usize)> {
    let graph = ModelProto::decode(model).ok()?.graph?;
    if graph.initializer.iter().any(|t| t.data_location == EXTERNAL) {
        return None;
    }
    let added = missing_shapes(&graph);
    if added.is_empty() {
        return None;
    }
    let n = added.len();
    let suffix = ModelProto {
        graph: Some(GraphProto {
            value_info: added,
            ..GraphProto::default()
        }),
    };
    let mut bytes = Vec::with_capacity(model.len() + suffix.encoded_len());
    bytes.extend_from_slice(model);
    suffix.encode(&mut bytes).ok()?;
    Some((bytes, n))
}

/// The `value_info` entries the graph lacks for its same-shape `ai.onnx.ml` outputs whose
/// input's type and shape are known, in node order (a chain of them is followed).
fn missing_shapes(graph: &GraphProto) -> Vec<ValueInfoProto> {
    let mut known: HashMap<&str, &TensorType> = HashMap::new();
    for v in graph.input.iter().chain(&graph.output).chain(&graph.value_info) {
        if let Some(t) = tensor_type(v) {
            known.entry(v.name.as_str()).or_insert(t);
        }
    }
    let mut added: Vec<ValueInfoProto> = Vec::new();
    for node in &graph.node {
        let Some(&(_, elem_type)) = SAME_SHAPE.iter().find(|(op, _)| *op == node.op_type) else {
            continue;
        };
        let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
            continue;
        };
        if node.domain != ML_DOMAIN || output.is_empty() || known.contains_key(output.as_str()) {
            continue;
        }
        let from = known
            .get(input.as_str())
            .copied()
            .or_else(|| added.iter().find(|v| v.name == *input).and_then(tensor_type));
        let Some(from) = from.filter(|t| t.shape.is_some() && t.elem_type != 0) else {
            continue;
        };
        let tensor = TensorType {
            elem_type: elem_type.unwrap_or(from.elem_type),
            shape: from.shape.clone(),
        };
        added.push(ValueInfoProto {
            name: output.clone(),
            r#type: Some(TypeProto {
                tensor_type: Some(tensor),
            }),
        });
    }
    added
}

/// The operators of a model's graph, in order (for tests: what ONNX Runtime's optimizer
/// wrote).
#[cfg(test)]
pub(crate) fn op_types(model: &[u8]) -> Vec<String> {
    let graph = ModelProto::decode(model).ok().and_then(|m| m.graph);
    graph
        .map(|g| g.node.into_iter().map(|n| n.op_type).collect())
        .unwrap_or_default()
}

fn tensor_type(v: &ValueInfoProto) -> Option<&TensorType> {
    v.r#type.as_ref()?.tensor_type.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                dim_value: *d,
                dim_param: d.is_none().then(|| "N".to_string()),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorType {
                    elem_type,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
        }
    }

    fn node(op: &str, domain: &str, input: &str, output: &str) -> NodeProto {
        NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            op_type: op.into(),
            domain: domain.into(),
        }
    }

    fn model(nodes: Vec<NodeProto>, value_info: Vec<ValueInfoProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                input: vec![value("x", 11, &[None, Some(30)])], // DOUBLE
                output: vec![value("y", FLOAT, &[None, Some(2)])],
                value_info,
                ..GraphProto::default()
            }),
        }
    }

    #[test]
    fn a_scaler_chain_gets_its_inputs_shape_and_the_bytes_before_are_kept() {
        let m = model(
            vec![
                node("Scaler", ML_DOMAIN, "x", "scaled"),
                node("Normalizer", ML_DOMAIN, "scaled", "normal"),
                node("Imputer", ML_DOMAIN, "normal", "imputed"),
                node("MatMul", "", "imputed", "y"),
            ],
            vec![],
        );
        let bytes = m.encode_to_vec();
        let (with, n) = with_ml_shapes(&bytes).expect("shapes added");
        assert_eq!(n, 3);
        assert_eq!(
            &with[..bytes.len()],
            &bytes[..],
            "the model's own bytes come first, unchanged"
        );
        // Parsed whole, the two messages merge: the nodes are kept and the shapes appended.
        let merged = ModelProto::decode(&with[..]).unwrap().graph.unwrap();
        assert_eq!(merged.node, m.graph.as_ref().unwrap().node);
        let names: Vec<_> = merged.value_info.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["scaled", "normal", "imputed"]);
        for v in &merged.value_info {
            let t = tensor_type(v).unwrap();
            // Scaler and Normalizer answer in float; Imputer keeps its input's type.
            assert_eq!(t.elem_type, FLOAT, "{}", v.name);
            assert_eq!(
                t.shape,
                value("x", 11, &[None, Some(30)])
                    .r#type
                    .unwrap()
                    .tensor_type
                    .unwrap()
                    .shape
            );
        }
    }

    #[test]
    fn nothing_is_added_where_a_shape_is_known_unknowable_or_not_ml() {
        let cases = [
            // The output already has a shape.
            model(
                vec![node("Scaler", ML_DOMAIN, "x", "s")],
                vec![value("s", FLOAT, &[None, Some(30)])],
            ),
            // The input's shape is not known.
            model(vec![node("Scaler", ML_DOMAIN, "unknown", "s")], vec![]),
            // Another domain's operator of the same name.
            model(vec![node("Scaler", "com.example", "x", "s")], vec![]),
            // An operator whose output shape is not its input's.
            model(vec![node("LinearClassifier", ML_DOMAIN, "x", "s")], vec![]),
        ];
        for m in cases {
            assert!(with_ml_shapes(&m.encode_to_vec()).is_none(), "{m:?}");
        }
    }

    #[test]
    fn a_model_with_external_data_or_bytes_that_do_not_parse_is_left_alone() {
        let mut m = model(vec![node("Scaler", ML_DOMAIN, "x", "s")], vec![]);
        assert!(with_ml_shapes(&m.encode_to_vec()).is_some());
        m.graph.as_mut().unwrap().initializer.push(TensorProto {
            data_location: EXTERNAL,
        });
        assert!(with_ml_shapes(&m.encode_to_vec()).is_none());
        assert!(
            with_ml_shapes(b"\x3a\xff\xff\xff").is_none(),
            "a truncated message"
        );
    }
}
