//! A cached answer's key: everything the answer depends on, in one canonical byte string.
//!
//! The pool that answers and its model version (after the split chose the variant), then
//! each input, sorted by name: name, datatype, shape and elements, little-endian. The
//! elements are those of the decoded tensor, so a JSON body and a binary-tensor body with
//! the same values give the same key, and input order in the request does not matter. The
//! requested outputs and their parameters are not in it: the whole answer is cached and the
//! request's own selection and encoding are applied to it on every hit (as on a miss).
//!
//! Lookup is by a 128-bit hash of the string; the string itself is kept with the entry and
//! compared before an answer is served, so two inputs whose hashes collide can never be
//! served each other's answer.

use inference::NamedTensor;
use inference::tensor::TensorData;

/// A request's canonical key and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub hash: u128,
    pub bytes: Box<[u8]>,
}

/// The hash the cache uses unless a test gives another.
pub fn xxh3(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// The canonical bytes of (`pool`, `version`, `inputs`).
pub fn canonical(pool: &str, version: &str, inputs: &[NamedTensor]) -> Vec<u8> {
    let data: usize = inputs
        .iter()
        .map(|t| t.tensor.data().len() * t.tensor.dtype().size().max(1))
        .sum();
    let mut out = Vec::with_capacity(64 + data + 32 * inputs.len());
    text(&mut out, pool);
    text(&mut out, version);
    let mut order: Vec<&NamedTensor> = inputs.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend_from_slice(&(order.len() as u32).to_le_bytes());
    for t in order {
        text(&mut out, &t.name);
        text(&mut out, t.tensor.dtype().as_str());
        out.extend_from_slice(&(t.tensor.shape().len() as u32).to_le_bytes());
        for d in t.tensor.shape() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        elements(&mut out, t.tensor.data());
    }
    out
}

/// The key bytes of a REST request body to `pool` at `version`, with its
/// `Inference-Header-Content-Length`: they begin with a length no string can have, so that
/// they never equal a [`canonical`] key.
pub fn body(pool: &str, version: &str, header_length: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + pool.len() + version.len() + body.len());
    out.extend_from_slice(&u32::MAX.to_le_bytes());
    text(&mut out, pool);
    text(&mut out, version);
    match header_length {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            text(&mut out, n);
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string (so that "ab" + "c" and "a" + "bc" differ).
fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn elements(out: &mut Vec<u8>, data: &TensorData) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::U16(v) => le!(v),
        TensorData::U32(v) => le!(v),
        TensorData::U64(v) => le!(v),
        TensorData::I8(v) => le!(v),
        TensorData::I16(v) => le!(v),
        TensorData::I32(v) => le!(v),
        TensorData::I64(v) => le!(v),
        TensorData::F32(v) => le!(v),
        TensorData::F64(v) => le!(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inference::Tensor;
    use inference::protocol;

    fn named(name: &str, shape: Vec<usize>, data: TensorData) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(shape, data).unwrap(),
        }
    }

    #[test]
    fn json_and_binary_bodies_of_the_same_values_give_the_same_key() {
        let json = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2.5,-0.125]}]}"#;
        let from_json = protocol::decode_request(json.as_bytes(), None).unwrap();
        // The same tensor in Triton's binary form: JSON header, then the raw elements.
        let header = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let mut body = header.as_bytes().to_vec();
        for x in [1.0f32, 2.5, -0.125] {
            body.extend_from_slice(&x.to_le_bytes());
        }
        let from_binary = protocol::decode_request(&body, Some(&header.len().to_string())).unwrap();
        assert_eq!(
            canonical("p", "1", &from_json.inputs),
            canonical("p", "1", &from_binary.inputs)
        );
    }

    #[test]
    fn everything_the_answer_depends_on_is_in_the_key() {
        let x = |v: Vec<f32>, shape: Vec<usize>| vec![named("x", shape, TensorData::F32(v))];
        let base = canonical("p", "1", &x(vec![1.0, 2.0], vec![1, 2]));
        for other in [
            canonical("q", "1", &x(vec![1.0, 2.0], vec![1, 2])),
            canonical("p", "2", &x(vec![1.0, 2.0], vec![1, 2])),
            canonical("p", "1", &x(vec![1.0, 2.5], vec![1, 2])),
            canonical("p", "1", &x(vec![1.0, 2.0], vec![2, 1])),
            canonical(
                "p",
                "1",
                &[named("y", vec![1, 2], TensorData::F32(vec![1.0, 2.0]))],
            ),
            canonical(
                "p",
                "1",
                &[named("x", vec![1, 2], TensorData::F64(vec![1.0, 2.0]))],
            ),
        ] {
            assert_ne!(base, other);
        }
        // Input order in the request does not matter.
        let a = named("a", vec![1], TensorData::I64(vec![7]));
        let b = named("b", vec![1], TensorData::I64(vec![8]));
        assert_eq!(
            canonical("p", "1", &[a.clone(), b.clone()]),
            canonical("p", "1", &[b, a])
        );
    }
}
