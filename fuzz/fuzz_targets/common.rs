//! What the request targets share.

use inference::protocol::codec;
use inference::{NamedTensor, TensorData};
use proxy::cache::key::canonical;

/// Tensors written as REST JSON decode to the same canonical key, when every value is finite
/// (JSON has no NaN or infinity: such a tensor cannot be written as JSON at all).
pub fn json_roundtrip(inputs: &[NamedTensor], key: &[u8]) {
    if !inputs.iter().all(|t| finite(t.tensor.data())) {
        return;
    }
    let json = codec::encode_request("id", inputs);
    let again = codec::decode_request(&json, None).expect("tensors written as JSON decode again");
    assert_eq!(
        canonical("pool", "1", &again.inputs),
        key,
        "JSON changed the tensors"
    );
}

fn finite(data: &TensorData) -> bool {
    match data {
        TensorData::F32(v) => v.iter().all(|x| x.is_finite()),
        TensorData::F64(v) => v.iter().all(|x| x.is_finite()),
        _ => true,
    }
}
