//! Decoding of JSON strings that are dense with escapes: a segment document sent through
//! `PutTraceSegments` is JSON inside a JSON string, so every quote of it arrives as `\"`, one
//! escape every eight bytes or so. serde_json handles each escape with a branch it cannot
//! predict and two calls; here a block of 64 bytes is classified at once, eight bytes at a time
//! with integer arithmetic, and its escapes are then taken in order from a bit mask.
//!
//! Anything unusual (a lone surrogate, a control character, an unknown escape, invalid UTF-8,
//! an unterminated string) makes the decoder give up, and the caller decodes with serde_json,
//! whose answer, error or not, is the one that counts.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const BLOCK: usize = 64;

/// The high bit of each byte of `word` below `limit` (at most 0x80), and perhaps of a byte just
/// above a byte that is: the subtraction's borrow runs into the next byte. The lowest bit set
/// is always exact; [`decode`] copies a near miss as it is.
fn below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGH
}

/// The high bit of each of the 8 bytes of `word` that is a quote, a backslash or a control
/// character, and perhaps of a byte just above one.
fn special(word: u64) -> u64 {
    below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20)
}

/// The specials of the 64 bytes from `at`, byte i's at bit i; bytes past the end count as
/// control characters, so an unterminated string stops there.
fn block_mask(s: &[u8], at: usize) -> u64 {
    match s.get(at..at + BLOCK) {
        Some(block) => specials(block.try_into().expect("a block")),
        None => tail_mask(s, at),
    }
}

#[cold]
fn tail_mask(s: &[u8], at: usize) -> u64 {
    let mut padded = [0u8; BLOCK];
    let tail = &s[at.min(s.len())..];
    padded[..tail.len()].copy_from_slice(tail);
    specials(&padded)
}

fn specials(block: &[u8; BLOCK]) -> u64 {
    // Word k's flag for its byte j goes to bit 8j + k, shifts and ors only; a transpose of the
    // 8x8 bit matrix then puts it at bit 8k + j. (Gathering each word's flags with a multiply
    // instead is what the compiler vectorizes into slow 64-bit multiplies.)
    let by_byte = block
        .chunks_exact(8)
        .enumerate()
        .fold(0, |bits, (k, word)| bits | (special(u64::from_le_bytes(word.try_into().expect("8 bytes"))) >> (7 - k)));
    transpose8(by_byte)
}

/// Transposes the 8x8 bit matrix whose row r is byte r (Hacker's Delight, 7-3).
fn transpose8(mut x: u64) -> u64 {
    let mut t = (x ^ (x >> 7)) & 0x00aa_00aa_00aa_00aa;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000_cccc_0000_cccc;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x0000_0000_f0f0_f0f0;
    x ^ t ^ (t << 28)
}

/// Reusable output space for [`decode`].
#[derive(Debug, Default)]
pub(crate) struct Scratch(Vec<u8>);

/// Decodes the JSON string whose contents start at `s[start]` (just after its opening quote).
/// Returns the decoded text and the index just after the closing quote, or `None` when the
/// string is one to leave to serde_json.
pub(crate) fn decode<'a>(s: &[u8], start: usize, scratch: &'a mut Scratch) -> Option<(&'a str, usize)> {
    let out = &mut scratch.0;
    let mut d = 0;
    let mut last = start;
    let mut at = start;
    // Set when the first byte of the next block is escaped by the last byte of this one.
    let mut escaped_first = 0;
    loop {
        let mut mask = block_mask(s, at) & !escaped_first;
        escaped_first = 0;
        while mask != 0 {
            let bit = mask.trailing_zeros();
            mask &= mask - 1;
            let p = at + bit as usize;
            // Never below `last`: the bytes an escape consumes are not specials. Checked all the
            // same, so a mistake here falls back to serde_json rather than panic.
            let run = p.checked_sub(last)?;
            // Room for the run and 16 bytes more: a short run is copied as 16 bytes at once, and
            // an escape writes at most 4.
            if out.len() < d + run + 16 {
                out.resize((d + run + 16).max(2 * out.len()).max(4096), 0);
            }
            match s.get(last..last + 16) {
                Some(sixteen) if run <= 16 => out[d..d + 16].copy_from_slice(sixteen),
                _ => out[d..d + run].copy_from_slice(&s[last..p]),
            }
            d += run;
            let byte = *s.get(p)?;
            if byte == b'\\' {
                // The escaped byte is never a special itself; clearing its bit here, not from
                // what it turns out to be, keeps the loop's next bit independent of the loads.
                mask &= !(2 << bit);
                escaped_first = u64::from(bit == 63);
                let escaped = *s.get(p + 1)?;
                match UNESCAPED[usize::from(escaped)] {
                    0 if escaped == b'u' => {
                        let c = hex4(s.get(p + 2..p + 6)?)?;
                        d += char::from_u32(c)?.encode_utf8(&mut out[d..d + 4]).len();
                        last = p + 6;
                    }
                    0 => return None,
                    unescaped => {
                        out[d] = unescaped;
                        d += 1;
                        last = p + 2;
                    }
                }
            } else if byte == b'"' {
                let text = std::str::from_utf8(&out[..d]).ok()?;
                return Some((text, p + 1));
            } else if byte < 0x20 {
                return None;
            } else {
                out[d] = byte;
                d += 1;
                last = p + 1;
            }
        }
        at += BLOCK;
        if at >= s.len() {
            return None;
        }
    }
}

/// What each two-byte escape stands for, by its second byte; 0 for none.
const UNESCAPED: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'/' as usize] = b'/';
    table[b'n' as usize] = b'\n';
    table[b't' as usize] = b'\t';
    table[b'r' as usize] = b'\r';
    table[b'b' as usize] = 0x08;
    table[b'f' as usize] = 0x0c;
    table
};

/// Four hex digits of a `\u` escape.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, &b| Some(value << 4 | (b as char).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decoded(json: &str) -> Option<(String, usize)> {
        let mut scratch = Scratch::default();
        decode(json.as_bytes(), 1, &mut scratch).map(|(text, end)| (text.to_owned(), end))
    }

    #[test]
    fn escapes_decode_as_serde_json_decodes_them() {
        for json in [
            r#""""#,
            r#""plain""#,
            r#""{\"name\":\"a\\\"b\",\"t\":1.5}""#,
            r#""\\\\\"\/\b\f\n\r\t""#,
            r#""caf\u00e9 \u20ac \u0041""#,
            "\"h\u{e9}llo \u{1F600}\"",
        ] {
            let expected: String = serde_json::from_str(json).unwrap();
            assert_eq!(decoded(json), Some((expected, json.len())), "{json}");
        }
    }

    #[test]
    fn strings_that_serde_json_must_judge_are_left_to_it() {
        for json in [r#""open"#, r#""\ud800""#, r#""\x""#, "\"tab\there\"", r#""\u12""#, r#""ends\"#] {
            assert_eq!(decoded(json), None, "{json}");
        }
        let mut scratch = Scratch::default();
        assert_eq!(decode(b"\"\xff\"", 1, &mut scratch), None);
    }

    #[test]
    fn the_end_is_found_in_any_block() {
        for len in 0..200 {
            let body = format!("\"{}\\\"{}\" tail", "x".repeat(len), "y".repeat(len % 7));
            let expected: String = serde_json::Deserializer::from_str(&body).into_iter().next().unwrap().unwrap();
            assert_eq!(decoded(&body), Some((expected, body.len() - 5)), "{len}");
        }
    }

    proptest! {
        #[test]
        fn every_special_byte_is_found_and_the_first_exactly(block in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'#'), Just(b']'), Just(b' '), 0u8..0x20, any::<u8>()],
            BLOCK,
        )) {
            let bytes: [u8; BLOCK] = block.try_into().unwrap();
            let exact = bytes.iter().enumerate().fold(0u64, |m, (i, &b)| {
                m | u64::from(b == b'"' || b == b'\\' || b < 0x20) << i
            });
            let found = specials(&bytes);
            prop_assert_eq!(found & exact, exact);
            prop_assert_eq!(found.trailing_zeros(), exact.trailing_zeros());
        }

        #[test]
        fn agrees_with_serde_json(text in "(\\PC|[\"\\\\\u{0}-\u{1f}/]){0,200}", garbage in "(\\\\[\"\\\\/bfnrtux]|[0-9a-fA-F]|\\PC|[\u{0}-\u{1f}\"]){0,12}") {
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(decoded(&json), Some((text, json.len())));
            let raw = format!("\"{garbage}\"");
            if let Some(got) = decoded(&raw) {
                let mut stream = serde_json::Deserializer::from_str(&raw).into_iter::<String>();
                let first = stream.next().and_then(Result::ok);
                prop_assert_eq!(first.map(|text| (text, stream.byte_offset())), Some(got));
            }
        }
    }
}
