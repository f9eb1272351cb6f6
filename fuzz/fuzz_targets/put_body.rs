//! Any bytes as a `PutTraceSegments` body: the fast reader answers exactly as serde_json does,
//! documents and errors alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roentgen_model::api::PutTraceSegmentsRequest;

fuzz_target!(|data: &[u8]| {
    let fast = PutTraceSegmentsRequest::from_json(data).map(|r| r.trace_segment_documents).map_err(|e| e.to_string());
    let serde = serde_json::from_slice::<PutTraceSegmentsRequest>(data)
        .map(|r| r.trace_segment_documents)
        .map_err(|e| e.to_string());
    assert_eq!(fast, serde);
});
