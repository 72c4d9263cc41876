//! What each fuzz target checks of one input, shared with the stable test that replays the
//! committed corpora (`proxy/tests/fuzz_corpus.rs`): a property that fails panics.

use inference::protocol::{codec, grpc};
use inference::{NamedTensor, TensorData};
use proxy::cache::key::canonical;
use proxy::http::h1::agree;
use proxy::predictions::{predictions, predictions_from_json};

/// A REST inference body (JSON, or JSON followed by binary tensors), as the gateway and
/// inference-server read it; the first two bytes give the `Inference-Header-Content-Length`
/// value, none when `ff ff`. What decodes encodes again, as gRPC's raw contents and as JSON,
/// to the same tensors: the same cache key (which holds every name, type, shape and value bit
/// for bit).
pub fn rest_request(data: &[u8]) {
    let [a, b, body @ ..] = data else { return };
    let n = u16::from_le_bytes([*a, *b]);
    let header = (n != u16::MAX).then(|| n.to_string());
    let Ok(request) = codec::decode_request(body, header.as_deref()) else {
        return;
    };
    let key = canonical("pool", "1", &request.inputs);
    let pb = grpc::encode_request("model", "1", "id", &request.inputs);
    let again = grpc::decode_request(pb).expect("what REST decoded, gRPC decodes");
    assert_eq!(canonical("pool", "1", &again.inputs), key, "REST and gRPC differ");
    json_roundtrip(&request.inputs, &key);
}

/// A gRPC `ModelInferRequest` (the protobuf message, typed contents or raw). What decodes
/// encodes again as REST JSON to the same tensors.
pub fn grpc_request(data: &[u8]) {
    let Ok(message) = <grpc::pb::ModelInferRequest as prost::Message>::decode(data) else {
        return;
    };
    let Ok(request) = grpc::decode_request(message) else {
        return;
    };
    let key = canonical("pool", "1", &request.inputs);
    json_roundtrip(&request.inputs, &key);
}

/// An inference answer's JSON: the gateway's hand-written reader of predictions agrees with a
/// full serde_json decode wherever it answers.
pub fn answer_scan(data: &[u8]) {
    let Some(fast) = predictions_from_json(data) else {
        return;
    };
    let full = inference::protocol::decode_response(data, None)
        .expect("an answer the fast reader read, a full decode reads");
    let slow = predictions(&full.outputs);
    let bits = |p: &[(i64, Option<f64>)]| -> Vec<(i64, Option<u64>)> {
        p.iter().map(|(c, v)| (*c, v.map(f64::to_bits))).collect()
    };
    assert_eq!(
        bits(&fast),
        bits(&slow),
        "the fast reader and the full decode differ"
    );
}

/// `routes.yaml` text: a config or a list of errors, never a panic. It names a directory that
/// does not exist: a keys file or models relative to it are missing, an error like any other.
pub fn routes_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = proxy::config::parse(std::path::Path::new("/nonexistent/fuzz/routes.yaml"), text);
}

/// An HTTP/1.1 request stream as a client sends it (these bytes, then the end of the stream).
/// Whatever the gateway's own reader serves, pingora's session reads the same way: the same
/// method, target, header fields and body (so the next request starts at the same place);
/// what it does not serve, it hands over to pingora. The property test of
/// `proxy/src/http/h1/tests.rs`, on any bytes.
pub fn h1_request(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let Some(ours) = agree::ours(data).await else {
            return;
        };
        assert_eq!(
            Some(&ours),
            agree::pingoras(data).await.as_ref(),
            "served differently from pingora"
        );
    });
}

/// Tensors written as REST JSON decode to the same canonical key, when every value is finite
/// (JSON has no NaN or infinity: such a tensor cannot be written as JSON at all).
fn json_roundtrip(inputs: &[NamedTensor], key: &[u8]) {
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
