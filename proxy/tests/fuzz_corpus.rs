//! The fuzz targets' corpora (`fuzz/corpus/`), replayed through the same checks on stable in
//! every test run: the inputs that once reached new code in the parsers keep holding their
//! properties (`fuzz/README.md`). No fuzzing here: only what is committed.

#[path = "../../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("rest_request", checks::rest_request),
    ("grpc_request", checks::grpc_request),
    ("answer_scan", checks::answer_scan),
    ("h1_request", checks::h1_request),
    ("routes_yaml", checks::routes_yaml),
];

#[test]
fn every_committed_fuzz_input_still_holds_its_property() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let dir = corpus.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| f.expect("a directory entry").path())
            .collect();
        files.sort();
        // A corpus that went missing would pass below without checking anything.
        assert!(files.len() >= 100, "{target}: {} inputs only", files.len());
        for file in files {
            let data = std::fs::read(&file).expect("a corpus file");
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "inputs that fail their check: {failed:#?}");
}
