//! `routes.yaml` text: [`checks::routes_yaml`].
#![no_main]

#[allow(dead_code)] // each target uses one check
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::routes_yaml(data));
