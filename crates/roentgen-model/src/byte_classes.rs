//! Where the quotes, backslashes and control characters of a run of bytes are: what both JSON
//! readers look for in a string, as bit masks with byte i at bit i.
//!
//! On x86-64, sixteen bytes are compared at once with SSE2, which every x86-64 processor has,
//! through `safe_arch` (its functions are safe wherever the feature is compiled in). Elsewhere
//! eight bytes at a time with integer arithmetic, which is also what the tests hold to the same
//! answers on x86-64. Where the processor has AVX-512 (found at run time: [`Avx512::detect`]),
//! a block is one comparison per class, and bytes can be dropped from it in one instruction.

/// Bytes classified at once by [`Classes::of`].
pub(crate) const BLOCK: usize = 64;

/// Where the quotes, backslashes and control characters of a block are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Classes {
    pub(crate) quotes: u64,
    pub(crate) backslashes: u64,
    pub(crate) controls: u64,
}

impl Classes {
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn of(block: &[u8; BLOCK]) -> Self {
        let mut classes = Classes { quotes: 0, backslashes: 0, controls: 0 };
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            let [quotes, backslashes, controls] = sse2::classes(chunk.try_into().expect("16 bytes"));
            classes.quotes |= u64::from(quotes) << (16 * k);
            classes.backslashes |= u64::from(backslashes) << (16 * k);
            classes.controls |= u64::from(controls) << (16 * k);
        }
        classes
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn of(block: &[u8; BLOCK]) -> Self {
        swar::classes(block)
    }
}

/// Where the first quote, backslash or control character of `bytes` at or after `at` is, or
/// `None` when there is none.
pub(crate) fn next_special(bytes: &[u8], mut at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(at..at + 16) {
        let [quotes, backslashes, controls] = sse2::classes(chunk.try_into().ok()?);
        let special = quotes | backslashes | controls;
        if special != 0 {
            return Some(at + special.trailing_zeros() as usize);
        }
        at += 16;
    }
    #[cfg(not(target_arch = "x86_64"))]
    while let Some(chunk) = bytes.get(at..at + 8) {
        let special = swar::specials(u64::from_le_bytes(chunk.try_into().ok()?));
        if special != 0 {
            return Some(at + (special.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes.get(at..)?;
    tail.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|p| at + p)
}

/// Proof that the processor has AVX-512 with byte compression (VBMI2: Intel from Ice Lake, AMD
/// from Zen 4): [`Avx512::detect`] makes one only there. Off x86-64 there is none to make.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512(#[cfg(not(target_arch = "x86_64"))] std::convert::Infallible);

impl Avx512 {
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn detect() -> Option<Self> {
        let has = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi2");
        has.then_some(Avx512())
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(crate) fn detect() -> Option<Self> {
        None
    }

    /// The classes of a block.
    #[inline(always)]
    pub(crate) fn classes(self, block: &[u8; BLOCK]) -> Classes {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: `self` exists, so the processor has the features `avx512::classes` needs.
        return unsafe { avx512::classes(block) };
        #[cfg(not(target_arch = "x86_64"))]
        match self.0 {}
    }

    /// Writes `block` without the bytes that `drop` marks to the start of `out`, and returns how
    /// many it wrote; zeros fill the rest of `out`.
    #[inline(always)]
    pub(crate) fn drop_bytes(self, block: &[u8; BLOCK], drop: u64, out: &mut [u8; BLOCK]) -> usize {
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        // SAFETY: `self` exists, so the processor has the features `avx512::drop_bytes` needs.
        return unsafe { avx512::drop_bytes(block, drop, out) };
        #[cfg(not(target_arch = "x86_64"))]
        match self.0 {}
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512i, _mm512_cmpeq_epi8_mask, _mm512_cmplt_epu8_mask, _mm512_loadu_si512, _mm512_maskz_compress_epi8,
        _mm512_set1_epi8, _mm512_storeu_si512,
    };

    use super::{BLOCK, Classes};

    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(unsafe_code)]
    #[inline]
    fn load(block: &[u8; BLOCK]) -> __m512i {
        // SAFETY: the load reads 64 bytes, the array's length; it needs no alignment.
        unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(super) fn classes(block: &[u8; BLOCK]) -> Classes {
        let bytes = load(block);
        Classes {
            quotes: _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(b'"' as i8)),
            backslashes: _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(b'\\' as i8)),
            controls: _mm512_cmplt_epu8_mask(bytes, _mm512_set1_epi8(0x20)),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
    #[allow(unsafe_code)]
    #[inline]
    pub(super) fn drop_bytes(block: &[u8; BLOCK], drop: u64, out: &mut [u8; BLOCK]) -> usize {
        let kept = _mm512_maskz_compress_epi8(!drop, load(block));
        // SAFETY: the store writes 64 bytes, the array's length; it needs no alignment.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), kept) };
        BLOCK - drop.count_ones() as usize
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use safe_arch::{cmp_eq_mask_i8_m128i, load_unaligned_m128i, max_u8_m128i, move_mask_i8_m128i, set_splat_i8_m128i};

    /// The quotes, backslashes and control characters of 16 bytes.
    pub(super) fn classes(chunk: &[u8; 16]) -> [u16; 3] {
        let bytes = load_unaligned_m128i(chunk);
        let equal = |byte: u8| {
            let mask = move_mask_i8_m128i(cmp_eq_mask_i8_m128i(bytes, set_splat_i8_m128i(byte as i8)));
            mask as u16
        };
        // Below 0x20 exactly when the larger of the byte and 0x1f, unsigned, is 0x1f.
        let low = set_splat_i8_m128i(0x1f);
        let controls = move_mask_i8_m128i(cmp_eq_mask_i8_m128i(max_u8_m128i(bytes, low), low)) as u16;
        [equal(b'"'), equal(b'\\'), controls]
    }
}

/// Eight bytes at a time in a `u64`: the portable way, and the reference the tests hold SSE2 to.
#[cfg(any(test, not(target_arch = "x86_64")))]
pub(crate) mod swar {
    use super::{BLOCK, Classes};

    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

    /// The high bit of each zero byte of `word`, and no other bit: no byte's sum carries into the
    /// next, so unlike the usual `(x - ONES) & !x` test there are no false positives.
    fn zero_bytes(word: u64) -> u64 {
        !(((word & LOW7) + LOW7) | word | LOW7)
    }

    /// The high bit of each quote, backslash and control character of `word` (first byte
    /// lowest).
    pub(crate) fn specials(word: u64) -> u64 {
        zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | zero_bytes(word & (ONES * 0xe0))
    }

    pub(crate) fn classes(block: &[u8; BLOCK]) -> Classes {
        // Word k's flag for its byte j goes to bit 8j + k, shifts and ors only; a transpose of
        // the 8x8 bit matrix then puts it at bit 8k + j. (Gathering each word's flags with a
        // multiply instead is what the compiler vectorizes into slow 64-bit multiplies.)
        let (mut quotes, mut backslashes, mut controls) = (0, 0, 0);
        for (k, word) in block.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            quotes |= zero_bytes(word ^ (ONES * u64::from(b'"'))) >> (7 - k);
            backslashes |= zero_bytes(word ^ (ONES * u64::from(b'\\'))) >> (7 - k);
            // Below 0x20: the top three bits clear.
            controls |= zero_bytes(word & (ONES * 0xe0)) >> (7 - k);
        }
        Classes { quotes: transpose8(quotes), backslashes: transpose8(backslashes), controls: transpose8(controls) }
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
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bytes() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(b'"'),
            Just(b'\\'),
            Just(b'#'),
            Just(b']'),
            Just(b' '),
            Just(0x1f),
            Just(0x20),
            0u8..0x20,
            any::<u8>()
        ]
    }

    proptest! {
        #[test]
        fn every_class_is_found_exactly(block in proptest::collection::vec(bytes(), BLOCK)) {
            let bytes: [u8; BLOCK] = block.try_into().unwrap();
            let mask = |class: fn(u8) -> bool| bytes.iter().enumerate().fold(0u64, |m, (i, &b)| m | u64::from(class(b)) << i);
            let exact = Classes { quotes: mask(|b| b == b'"'), backslashes: mask(|b| b == b'\\'), controls: mask(|b| b < 0x20) };
            prop_assert_eq!(Classes::of(&bytes), exact);
            prop_assert_eq!(swar::classes(&bytes), exact);
            if let Some(avx512) = Avx512::detect() {
                prop_assert_eq!(avx512.classes(&bytes), exact);
            }
        }

        #[test]
        fn dropped_bytes_are_gone_and_the_rest_in_order(block in proptest::collection::vec(any::<u8>(), BLOCK), drop: u64) {
            let Some(avx512) = Avx512::detect() else { return Ok(()) };
            let bytes: [u8; BLOCK] = block.try_into().unwrap();
            let kept: Vec<u8> = bytes.iter().enumerate().filter(|&(i, _)| drop >> i & 1 == 0).map(|(_, &b)| b).collect();
            let mut out = [0u8; BLOCK];
            let written = avx512.drop_bytes(&bytes, drop, &mut out);
            prop_assert_eq!(&out[..written], &kept[..]);
        }

        #[test]
        fn the_next_special_is_the_first_one(text in proptest::collection::vec(bytes(), 0..100), at in 0usize..110) {
            let expected = text.iter().enumerate().skip(at).find(|&(_, &b)| b == b'"' || b == b'\\' || b < 0x20).map(|(i, _)| i);
            prop_assert_eq!(next_special(&text, at), expected);
        }

        #[test]
        fn eight_bytes_tell_their_first_special(word in proptest::collection::vec(bytes(), 8)) {
            let first = word.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let special = swar::specials(u64::from_le_bytes(word.try_into().unwrap()));
            prop_assert_eq!(first, (special != 0).then(|| (special.trailing_zeros() / 8) as usize));
        }
    }
}
