//! An inference answer's JSON: [`checks::answer_scan`].
#![no_main]

#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::answer_scan(data));
