//! Any text as a filter expression: parsing never panics, and a parsed filter printed and
//! parsed again is the same tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roentgen_query::Filter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(filter) = Filter::parse(text) {
        let printed = filter.to_string();
        assert_eq!(Filter::parse(&printed).as_ref(), Ok(&filter), "{printed}");
        let _ = filter.requirements();
    }
});
