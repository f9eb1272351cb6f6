//! Trace and segment identifiers.
//!
//! A trace id is `1-{8 hex: epoch seconds}-{24 hex: 96 random bits}`; we keep it as one `u128`
//! whose top 32 bits are the epoch, so sorting by id sorts by trace start time first.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An X-Ray trace id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TraceId(u128);

/// Why a trace id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trace id {0:?} is not of the form 1-<8 hex digits>-<24 hex digits>")]
pub struct InvalidTraceId(pub String);

impl TraceId {
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    pub const fn as_u128(self) -> u128 {
        self.0
    }

    pub fn from_parts(epoch: u32, random: u128) -> Self {
        Self((u128::from(epoch) << 96) | (random & ((1u128 << 96) - 1)))
    }

    /// Epoch seconds of the original request, as carried in the id.
    pub const fn epoch(self) -> u32 {
        (self.0 >> 96) as u32
    }

    /// The 96 random bits, which make a good hash on their own.
    pub const fn random(self) -> u128 {
        self.0 & ((1u128 << 96) - 1)
    }

    pub fn parse(text: &str) -> Result<Self, InvalidTraceId> {
        let invalid = || InvalidTraceId(text.to_owned());
        let bytes = text.as_bytes();
        if bytes.len() != 35 || &bytes[..2] != b"1-" || bytes[10] != b'-' {
            return Err(invalid());
        }
        let epoch = parse_hex(&bytes[2..10]).ok_or_else(invalid)?;
        let random = parse_hex(&bytes[11..35]).ok_or_else(invalid)?;
        Ok(Self((epoch << 96) | random))
    }
}

impl FromStr for TraceId {
    type Err = InvalidTraceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1-{:08x}-{:024x}", self.epoch(), self.random())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A 64-bit segment, subsegment or exception id, written as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentId(u64);

impl SegmentId {
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 16 {
            return None;
        }
        parse_hex64(bytes).map(Self)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn parse_hex(digits: &[u8]) -> Option<u128> {
    match digits.len() {
        0..=16 => parse_hex64(digits).map(u128::from),
        _ => {
            let (high, low) = digits.split_at(digits.len() - 16);
            Some((u128::from(parse_hex64(high)?) << 64) | u128::from(parse_hex64(low)?))
        }
    }
}

/// Every segment id in every document goes through here, so it is a table lookup per digit
/// with one check at the end.
fn parse_hex64(digits: &[u8]) -> Option<u64> {
    debug_assert!(digits.len() <= 16);
    let mut value = 0u64;
    let mut invalid = 0u8;
    for &d in digits {
        let nibble = HEX[usize::from(d)];
        invalid |= nibble;
        value = (value << 4) | u64::from(nibble & 0x0f);
    }
    (invalid & 0x80 == 0).then_some(value)
}

/// The value of each hex digit; 0xff for any other byte.
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_documented_example() {
        let id = TraceId::parse("1-58406520-a006649127e371903a2de979").unwrap();
        assert_eq!(id.epoch(), 1_480_615_200);
        assert_eq!(id.to_string(), "1-58406520-a006649127e371903a2de979");
    }

    #[test]
    fn uppercase_hex_is_accepted_and_printed_lowercase() {
        let id = TraceId::parse("1-5759E988-BD862E3FE1BE46A994272793").unwrap();
        assert_eq!(id.to_string(), "1-5759e988-bd862e3fe1be46a994272793");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "1-5759e988",
            "2-5759e988-bd862e3fe1be46a994272793",
            "1-5759e98-bd862e3fe1be46a9942727933",
            "1-5759e988-bd862e3fe1be46a99427279",
            "1-5759e988_bd862e3fe1be46a994272793",
            "1-5759e98g-bd862e3fe1be46a994272793",
            "1-5759e988-bd862e3fe1be46a99427279\u{e9}",
        ] {
            assert!(TraceId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_ids() {
        assert_eq!(SegmentId::parse("70de5b6f19ff9a0a").unwrap().to_string(), "70de5b6f19ff9a0a");
        assert!(SegmentId::parse("70de5b6f19ff9a0").is_none());
        assert!(SegmentId::parse("70de5b6f19ff9a0z").is_none());
    }

    proptest! {
        #[test]
        fn trace_id_round_trips(epoch: u32, random: u128) {
            let id = TraceId::from_parts(epoch, random);
            prop_assert_eq!(TraceId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn segment_ids_parse_as_hex_numbers(text in "[0-9a-fA-F]{15,17}|[0-9a-fA-Fg-z+ ]{16}") {
            let expected = (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(&text, 16).unwrap());
            prop_assert_eq!(SegmentId::parse(&text).map(|id| id.0), expected);
        }

        #[test]
        fn trace_id_parser_never_panics(text in "\\PC{0,40}") {
            let _ = TraceId::parse(&text);
        }
    }
}
