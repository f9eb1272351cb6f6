//! Decoding of JSON strings that are dense with escapes: a segment document sent through
//! `PutTraceSegments` is JSON inside a JSON string, so every quote of it arrives as `\"`, one
//! escape every eight bytes or so. serde_json handles each escape with a branch it cannot
//! predict and two calls; here a block of 64 bytes is classified at once
//! ([`byte_classes`](crate::byte_classes)). A block whose only escapes are `\"` (nearly every
//! block of a document) has each backslash dropped, the runs between them copied up to 32 bytes
//! at once, or with AVX-512 all 64 bytes in one instruction; any other block has its escapes
//! taken one by one, in order, from a bit mask.
//!
//! Anything unusual (a lone surrogate, a control character, an unknown escape, invalid UTF-8,
//! an unterminated string) makes the decoder give up, and the caller decodes with serde_json,
//! whose answer, error or not, is the one that counts.

use crate::byte_classes::{Avx512, BLOCK, Classes};

/// A block and the 32 bytes after it.
const WINDOW: usize = BLOCK + 32;

/// The classes of the 64 bytes from `at`; bytes past the end count as control characters, so an
/// unterminated string stops there.
#[inline(always)]
fn classes_at(s: &[u8], at: usize, wide: Option<Avx512>) -> Classes {
    match (s.get(at..at + BLOCK), wide) {
        (Some(block), Some(avx512)) => avx512.classes(block.try_into().expect("a block")),
        (Some(block), None) => Classes::of(block.try_into().expect("a block")),
        (None, _) => classes_of_tail(s, at),
    }
}

#[cold]
fn classes_of_tail(s: &[u8], at: usize) -> Classes {
    let mut padded = [0u8; BLOCK];
    let tail = &s[at.min(s.len())..];
    padded[..tail.len()].copy_from_slice(tail);
    Classes::of(&padded)
}

/// Reusable output space for [`decode`].
#[derive(Debug, Default)]
pub(crate) struct Scratch(Vec<u8>);

/// Decodes the JSON string whose contents start at `s[start]` (just after its opening quote).
/// Returns the decoded text and the index just after the closing quote, or `None` when the
/// string is one to leave to serde_json.
pub(crate) fn decode<'a>(s: &[u8], start: usize, scratch: &'a mut Scratch) -> Option<(&'a str, usize)> {
    match Avx512::detect() {
        #[cfg(target_arch = "x86_64")]
        Some(avx512) => decode_avx512(avx512, s, start, scratch),
        wide => decode_with(wide, s, start, scratch),
    }
}

/// [`decode_with`] compiled with AVX-512 enabled, so that its instructions are inlined in the
/// loop instead of called block by block.
#[cfg(target_arch = "x86_64")]
fn decode_avx512<'a>(avx512: Avx512, s: &[u8], start: usize, scratch: &'a mut Scratch) -> Option<(&'a str, usize)> {
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    fn compiled_for_avx512<'a>(
        avx512: Avx512,
        s: &[u8],
        start: usize,
        scratch: &'a mut Scratch,
    ) -> Option<(&'a str, usize)> {
        decode_with(Some(avx512), s, start, scratch)
    }
    #[allow(unsafe_code)]
    // SAFETY: `avx512` exists, so the processor has the features.
    unsafe {
        compiled_for_avx512(avx512, s, start, scratch)
    }
}

/// [`decode`], with AVX-512 where `wide` says the processor has it.
#[inline(always)]
fn decode_with<'a>(wide: Option<Avx512>, s: &[u8], start: usize, scratch: &'a mut Scratch) -> Option<(&'a str, usize)> {
    let out = &mut scratch.0;
    let mut d = 0;
    let mut last = start;
    let mut at = start;
    // Set when the first byte of the next block is escaped by the last byte of this one.
    let mut escaped_first = 0;
    loop {
        // Text is never longer than its escaped form: room for what is left of this block, and
        // a window more (short runs are copied as 16 or 32 bytes at once), is room for its text.
        let room = d + (at + BLOCK).saturating_sub(last) + WINDOW;
        if out.len() < room {
            out.resize(room.max(2 * out.len()).max(4096), 0);
        }
        let classes = classes_at(s, at, wide);
        let backslashes = classes.backslashes;
        // A block plain but for escaped quotes: no control character, and exactly the bytes
        // after its backslashes (and its first, if escaped) are quotes. A backslash in the last
        // byte escapes the next block's first, which must be a quote too.
        if classes.controls == 0
            && classes.quotes == (backslashes << 1 | escaped_first)
            && (backslashes >> 63 == 0 || s.get(at + BLOCK) == Some(&b'"'))
        {
            if let (Some(avx512), Some(block)) = (wide, s.get(at..at + BLOCK)) {
                // Bytes before `last` were written already: an escape at the end of the block
                // before reached into this one.
                let drop = match last.checked_sub(at) {
                    Some(written) => backslashes | 1u64.checked_shl(written as u32).map_or(u64::MAX, |bit| bit - 1),
                    None => {
                        d += copy_run(out, d, s, last, at)?;
                        backslashes
                    }
                };
                let dst: &mut [u8; BLOCK] = out.get_mut(d..d + BLOCK)?.try_into().ok()?;
                d += avx512.drop_bytes(block.try_into().ok()?, drop, dst);
                last = at + BLOCK;
            } else {
                let mut mask = backslashes;
                // The first run may reach back into earlier blocks; the others lie within this one,
                // copied between fixed windows, 32 bytes at once when they are that short.
                if mask != 0 {
                    let p = at + mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    d += copy_run(out, d, s, last, p)?;
                    last = p + 1;
                }
                let src: Option<&[u8; WINDOW]> = s.get(at..at + WINDOW).and_then(|w| w.try_into().ok());
                if let Some(src) = src
                    && mask != 0
                {
                    let dst: &mut [u8; WINDOW] = out.get_mut(d..d + WINDOW).and_then(|w| w.try_into().ok())?;
                    let (mut from, mut written) = (last - at, 0);
                    while mask != 0 {
                        let p = mask.trailing_zeros() as usize;
                        mask &= mask - 1;
                        let run = p.checked_sub(from)?;
                        match src.get(from..from + 32) {
                            Some(chunk) if run <= 32 => dst.get_mut(written..written + 32)?.copy_from_slice(chunk),
                            _ => dst.get_mut(written..written + run)?.copy_from_slice(src.get(from..p)?),
                        }
                        written += run;
                        from = p + 1;
                    }
                    d += written;
                    last = at + from;
                }
                while mask != 0 {
                    let p = at + mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    d += copy_run(out, d, s, last, p)?;
                    last = p + 1;
                }
            }
            escaped_first = backslashes >> 63;
        } else {
            let mut mask = (classes.quotes | classes.backslashes | classes.controls) & !escaped_first;
            escaped_first = 0;
            while mask != 0 {
                let bit = mask.trailing_zeros();
                mask &= mask - 1;
                let p = at + bit as usize;
                d += copy_run(out, d, s, last, p)?;
                let byte = *s.get(p)?;
                if byte == b'\\' {
                    // The escaped byte is not a special, whatever it is.
                    mask &= !(2 << bit);
                    escaped_first = u64::from(bit == 63);
                    let escaped = *s.get(p + 1)?;
                    match UNESCAPED[usize::from(escaped)] {
                        0 if escaped == b'u' => {
                            let c = hex4(s.get(p + 2..p + 6)?)?;
                            d += char::from_u32(c)?.encode_utf8(out.get_mut(d..d + 4)?).len();
                            last = p + 6;
                        }
                        0 => return None,
                        unescaped => {
                            *out.get_mut(d)? = unescaped;
                            d += 1;
                            last = p + 2;
                        }
                    }
                } else if byte == b'"' {
                    let text = simdutf8::basic::from_utf8(&out[..d]).ok()?;
                    return Some((text, p + 1));
                } else {
                    return None;
                }
            }
        }
        at += BLOCK;
        if at >= s.len() {
            return None;
        }
    }
}

/// Copies `s[from..to]` to `out[d..]` and returns its length. The bytes a `\u` escape
/// consumes are never specials, so `to` is never below `from`; checked all the same, so a
/// mistake here falls back to serde_json rather than panic.
fn copy_run(out: &mut [u8], d: usize, s: &[u8], from: usize, to: usize) -> Option<usize> {
    let run = to.checked_sub(from)?;
    match s.get(from..from + 16) {
        Some(sixteen) if run <= 16 => out.get_mut(d..d + 16)?.copy_from_slice(sixteen),
        _ => out.get_mut(d..d + run)?.copy_from_slice(s.get(from..to)?),
    }
    Some(run)
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

    /// What [`decode`] gives for the string that starts at `s[1]`, after checking that the
    /// portable code gives the same.
    fn decoded_bytes(s: &[u8]) -> Option<(String, usize)> {
        let mut scratch = Scratch::default();
        let portable = decode_with(None, s, 1, &mut scratch).map(|(text, end)| (text.to_owned(), end));
        let fastest = decode(s, 1, &mut scratch).map(|(text, end)| (text.to_owned(), end));
        assert_eq!(portable, fastest, "{}", String::from_utf8_lossy(s));
        fastest
    }

    fn decoded(json: &str) -> Option<(String, usize)> {
        decoded_bytes(json.as_bytes())
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
        assert_eq!(decoded_bytes(b"\"\xff\""), None);
    }

    #[test]
    fn the_end_is_found_in_any_block() {
        for len in 0..200 {
            let body = format!("\"{}\\\"{}\" tail", "x".repeat(len), "y".repeat(len % 7));
            let expected: String = serde_json::Deserializer::from_str(&body).into_iter().next().unwrap().unwrap();
            assert_eq!(decoded(&body), Some((expected, body.len() - 5)), "{len}");
        }
    }

    #[test]
    fn documents_decode_at_every_alignment() {
        let document = r#"{"trace_id":"1-5759e988-bd862e3fe1be46a994272793","id":"defdfd9912dc5a56","name":"a\\\"b","start_time":1.5,"http":{"request":{"url":"https://x/y?q=\"z\""}},"annotations":{"k":"v\n\u00e9\\"}}"#;
        // Pretty-printed, with characters that only `\n`, `\t` and `\u` escapes carry.
        let pretty = format!("{{\n\t\"name\": \"a\u{1}b\",\n\t\"x\": \"{}\"\n}}", "\u{1f}\n".repeat(40));
        // A lone `\n` or `\u0001` among quotes, at every place in a block.
        let lone = format!("{{\"a\":\"{}\"}}\n{{\"b\":1}}\u{1}{{\"c\":2}}", "x".repeat(70));
        for document in [document, &pretty, &lone] {
            for shift in 0..2 * BLOCK {
                let text = format!("{}{document}", " ".repeat(shift));
                let body = format!("{},", serde_json::to_string(&text).unwrap());
                assert_eq!(decoded(&body), Some((text, body.len() - 1)), "{shift}");
            }
        }
    }

    proptest! {
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
