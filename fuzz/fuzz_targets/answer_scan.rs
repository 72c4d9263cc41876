//! An inference answer's JSON, as the gateway reads its predictions for the metrics and the
//! feedback store: the hand-written reader (`proxy::predictions::predictions_from_json`) must
//! agree with a full serde_json decode wherever it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::predictions::{predictions, predictions_from_json};

fuzz_target!(|data: &[u8]| {
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
});
