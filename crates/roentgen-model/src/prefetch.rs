//! Hints that start loading memory a loop is about to read, for the passes over data that left
//! the processor's caches seconds ago: a flush reads each document's records once, long after
//! they were parsed, and without a hint every record waits for memory in turn.
//!
//! Hints only: they change no value and cost a few cycles where the memory is already cached.
//! Off x86-64 they do nothing.

const LINE: usize = 64;

/// Starts loading the cache line that holds `value`.
#[inline]
pub fn line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(value);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Starts loading `items` from their start: a hint a cache line's worth of them (a hint an item,
/// at its start, for items larger than a line), `max` hints at most.
#[inline]
pub fn lines<T>(items: &[T], max: usize) {
    let stride = (LINE / std::mem::size_of::<T>().max(1)).max(1);
    for item in items.iter().step_by(stride).take(max) {
        line(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any slice, of any element size, empty or not, and any number of lines.
    #[test]
    fn hints_take_any_slice() {
        lines::<u8>(&[], 4);
        lines(&[(); 3], 4);
        lines(&[0u8; 1000], 0);
        lines(&[0u8; 1000], 100);
        lines(&[[0u64; 32]; 5], 3);
        line(&0u128);
    }
}
