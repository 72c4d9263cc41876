//! A REST inference body: [`checks::rest_request`].
#![no_main]

#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rest_request(data));
