//! Any bytes as a segment document: parsing never panics, and what parses can be summarised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = parse_document(data, MAX_DOCUMENT_BYTES) {
        let summary = roentgen_query::summarize(doc.trace_id, &[&doc], 1);
        assert!(summary.duration() >= 0.0);
    }
});
