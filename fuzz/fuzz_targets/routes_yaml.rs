//! `routes.yaml` as `gateway check`, `gateway run` and a reload read it: any text gets a
//! config or a list of errors, never a panic (sizes, durations, percentages and weights are
//! parsed and added up here).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: a keys file or models named relative to it are
    // missing, and that is an error like any other.
    let _ = proxy::config::parse(std::path::Path::new("/nonexistent/fuzz/routes.yaml"), text);
});
