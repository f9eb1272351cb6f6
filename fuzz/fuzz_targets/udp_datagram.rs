//! Any bytes as a UDP datagram of the daemon protocol: header check, then the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roentgen_model::{MAX_DOCUMENT_BYTES, parse_document};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = roentgen_server::split_datagram(data) {
        let _ = parse_document(body, MAX_DOCUMENT_BYTES);
    }
});
