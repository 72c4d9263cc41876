//! A REST inference body (JSON, or JSON followed by binary tensors), as the gateway and
//! inference-server read it. Never a panic; what decodes encodes again, as gRPC's raw contents
//! and as JSON, to the same tensors: the same cache key (`proxy::cache::key::canonical`,
//! which holds every name, type, shape and value bit for bit).
#![no_main]

use inference::protocol::{codec, grpc};
use libfuzzer_sys::fuzz_target;
use proxy::cache::key::canonical;

mod common;

fuzz_target!(|data: &[u8]| {
    // The first two bytes: the `Inference-Header-Content-Length` value, none when 0xffff.
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
    common::json_roundtrip(&request.inputs, &key);
});
