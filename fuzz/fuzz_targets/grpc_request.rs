//! A gRPC `ModelInferRequest` (the protobuf message, typed contents or raw), as the gateway and
//! inference-server read it. Never a panic; what decodes encodes again as REST JSON to the
//! same tensors (the same cache key).
#![no_main]

use inference::protocol::grpc;
use libfuzzer_sys::fuzz_target;
use proxy::cache::key::canonical;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = <grpc::pb::ModelInferRequest as prost::Message>::decode(data) else {
        return;
    };
    let Ok(request) = grpc::decode_request(message) else {
        return;
    };
    let key = canonical("pool", "1", &request.inputs);
    common::json_roundtrip(&request.inputs, &key);
});
