//! An HTTP/1.1 request stream: [`checks::h1_request`].
#![no_main]

#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::h1_request(data));
