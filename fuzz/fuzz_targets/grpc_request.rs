//! A gRPC `ModelInferRequest`: [`checks::grpc_request`].
#![no_main]

#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::grpc_request(data));
