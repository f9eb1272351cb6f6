//! The global allocator of roentgen's binaries: mimalloc, called the way the standard library
//! calls a C `malloc`, with the options the server wants. All the workspace's `unsafe` code but
//! the store's threads' scheduling policies and the model's AVX-512 (CODE_STYLE.md).
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`. mimalloc takes its fast
//! path there only while the size class's current page has a free block; when it has none, as
//! whenever the heap grows (for seconds at a time in this server), a block whose size is not a
//! power of two is over-allocated by the alignment less one. That moves sizes at the top of a
//! class into the next (a 368-byte summary in its `Arc`, 384 bytes, into a 448-byte block) and
//! marks the page as holding interior pointers, which sends every later free on it down a slower
//! path. A plain `mi_malloc` block is aligned for any fundamental type (16 bytes on x86-64 and
//! aarch64), as a C `malloc`'s is, so layouts within that take it, under the rule of the
//! standard library's `System`; larger alignments keep the aligned calls.
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every block `mi_malloc` returns that is at least this large
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are aligned to their size.
const MALLOC_ALIGN: usize = 16;

/// The allocator; `#[global_allocator] static A: Mimalloc = Mimalloc;` installs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

fn plain_malloc_fits(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: for each method, mimalloc's functions return null or a block of at least `size`
// bytes; a plain block is aligned to `MALLOC_ALIGN`, or to its size when smaller, which
// `plain_malloc_fits` requires to cover the alignment; otherwise the aligned functions are
// given the alignment. Pointers passed back come from these functions, as `GlobalAlloc`'s
// contract guarantees, and `mi_free` and `mi_realloc` take blocks from either kind.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see above.
        let block = unsafe {
            if plain_malloc_fits(align, size) { mi::mi_malloc(size) } else { mi::mi_malloc_aligned(size, align) }
        };
        block.cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: see above.
        let block = unsafe {
            if plain_malloc_fits(align, size) { mi::mi_zalloc(size) } else { mi::mi_zalloc_aligned(size, align) }
        };
        block.cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see above.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let ptr = ptr.cast::<c_void>();
        // SAFETY: see above.
        let block = unsafe {
            if plain_malloc_fits(align, new_size) {
                mi::mi_realloc(ptr, new_size)
            } else {
                mi::mi_realloc_aligned(ptr, new_size, align)
            }
        };
        block.cast()
    }
}

/// mimalloc's `purge_decommits`, 5 in its `mi_option_t` (mimalloc.h). libmimalloc-sys leaves
/// it out of its constants; mimalloc keeps the numbers of its options, deprecating in place.
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Each flush frees the documents it wrote, a few hundred MB, and the next seconds of ingest
/// allocate as much again. mimalloc gives memory that stayed free for a second back to the
/// system, by default with `MADV_DONTNEED`, so the ingest then faults every page back in and the
/// kernel zeroes it: a quarter of the server's CPU under `perf`. With purges as `MADV_FREE`, the
/// kernel takes those pages only when it needs memory, and until then reusing them costs
/// nothing: 0.95 times the server's CPU, 0.65 times the page faults, and a peak RSS 1.05 times
/// as high, as freed pages stay counted until taken (BENCHMARKS.md). The environment's
/// `MIMALLOC_PURGE_DECOMMITS=1` brings the default back. Call it first in `main`, before any
/// other thread exists.
#[allow(unsafe_code)]
pub fn reuse_freed_pages_until_the_kernel_needs_them() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_none() {
        // SAFETY: `mi_option_set` stores a number in mimalloc's table of options, read at each
        // purge; it takes no pointer, and it runs before the binary starts any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0) };
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_layouts_alignment_and_keep_their_contents() {
        let mut held = Vec::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 9, 16, 24, 40, 100, 368, 384, 400, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: the layout has a non-zero size; each block is freed once, below.
                let block = unsafe { Mimalloc.alloc(layout) };
                assert!(!block.is_null() && (block as usize).is_multiple_of(align), "size {size}, alignment {align}");
                // SAFETY: the block holds `size` bytes.
                unsafe { block.write_bytes(0xA5, size) };
                // SAFETY: as above, and the new size is non-zero.
                let grown = unsafe { Mimalloc.realloc(block, layout, size * 3) };
                assert!((grown as usize).is_multiple_of(align), "grown: size {size}, alignment {align}");
                // SAFETY: the first `size` bytes were copied from the old block.
                assert!(unsafe { std::slice::from_raw_parts(grown, size) }.iter().all(|&b| b == 0xA5));
                held.push((grown, Layout::from_size_align(size * 3, align).unwrap()));
                // SAFETY: as for `alloc`.
                let zeroed = unsafe { Mimalloc.alloc_zeroed(layout) };
                assert!((zeroed as usize).is_multiple_of(align));
                // SAFETY: the block holds `size` bytes.
                assert!(unsafe { std::slice::from_raw_parts(zeroed, size) }.iter().all(|&b| b == 0));
                held.push((zeroed, layout));
            }
        }
        for (block, layout) in held {
            // SAFETY: each block came from this allocator with this layout, and is freed once.
            unsafe { Mimalloc.dealloc(block, layout) };
        }
    }
}
