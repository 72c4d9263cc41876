//! What each fuzz target checks of one input, shared with the stable test that replays the
//! committed corpora (`proxy/tests/fuzz_corpus.rs`): a property that fails panics.

use inference::protocol::{codec, grpc};
use inference::{NamedTensor, TensorData};
use proxy::cache::key::canonical;
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
        let Some(ours) = h1::ours(data).await else {
            return;
        };
        assert_eq!(
            Some(&ours),
            h1::pingoras(data).await.as_ref(),
            "served differently from pingora"
        );
    });
}

mod h1 {
    use std::time::{Duration, Instant};

    use pingora::http::RequestHeader;
    use proxy::http::h1::{Conn, Next, Waits};
    use tokio::io::AsyncWriteExt;

    /// Method, target, header fields in order, body.
    type Read = (String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

    fn fields(req: &RequestHeader) -> Vec<(String, Vec<u8>)> {
        let each =
            |(k, v): (&http::HeaderName, &http::HeaderValue)| (k.as_str().to_string(), v.as_bytes().to_vec());
        req.headers.iter().map(each).collect()
    }

    /// The gateway's reader, or `None` when it does not serve these bytes.
    pub async fn ours(bytes: &[u8]) -> Option<Read> {
        // The client has sent everything and shut its side (a half-close): reads end after
        // `bytes`, nothing waits, and what the reader writes (a `100 Continue`) is taken.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.shutdown().await.ok()?;
        let mut conn = Conn::with_buffer(Box::new(a), bytes);
        let waits = Waits {
            idle: Duration::from_millis(50),
            header: Duration::from_millis(50),
            max_header_bytes: 64 * 1024,
        };
        if conn.next_request(waits).await != Next::Request {
            return None;
        }
        let req = conn.req_header();
        let (method, target, fields) = (req.method.to_string(), req.uri.to_string(), fields(req));
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = conn.read_body(Instant::now() + Duration::from_millis(50)).await {
            body.extend_from_slice(&chunk);
        }
        drop(b);
        Some((method, target, fields, body))
    }

    /// pingora's HTTP/1 session on the same bytes.
    pub async fn pingoras(bytes: &[u8]) -> Option<Read> {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        b.write_all(bytes).await.ok()?;
        b.shutdown().await.ok()?;
        let mut session = pingora::protocols::http::ServerSession::new_http1(Box::new(a));
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        let req = session.req_header();
        let (method, target, fields) = (req.method.to_string(), req.uri.to_string(), fields(req));
        let mut body = Vec::new();
        // A body that ends early: both readers see the bytes there were.
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        Some((method, target, fields, body))
    }
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
