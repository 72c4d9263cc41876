//! The global allocator of both binaries: mimalloc, asked for an alignment only when its
//! plain functions would not already give it.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`. Since
//! mimalloc 3, that takes the plain path only for power-of-two sizes: a 48-byte struct aligned
//! to 8 goes through the slow path into a 64-byte block of another size class, so its own
//! size class never gets a block back and the next one takes the slow path again. On a
//! proxied request that was 9 allocations in 58, and 2,100 instructions (callgrind).
//!
//! Every mimalloc block is a whole number of words from a page start aligned at least as
//! much, so a request aligned to a word or less takes `mi_malloc`; larger alignments keep the
//! `_aligned` functions. (mimalloc's own issue: microsoft/mimalloc#314.)
//!
//! mimalloc is built without transparent huge pages (`libmimalloc-sys`'s `no_thp`, in the
//! workspace's Cargo.toml): otherwise it asks for them on its arenas (`MADV_HUGEPAGE`), and
//! after it returns free memory to the system, the next allocation there faults in a whole
//! 2 MiB page the kernel zeroes first. In the gateway with a local shadow that was 5% of the
//! process's CPU samples (`clear_page_erms` under `do_huge_pmd_anonymous_page`, mostly on
//! the shadow thread, whose frees of the client path's tensors return pages). A one-off
//! (2026-12-04, `target/dist` builds of one commit with and without the feature, side by side
//! on core 0, the configuration of `loadtests/bench_shadow.sh` at 14,000 requests/s from
//! `loadgen` on core 1, four turns each): copies compared 41, 61, 81, 87% without huge pages
//! against 34, 52, 74, 53% with them; the primary's p99 1.6–2.7 ms against 2.3–24 ms; CPU per
//! request and the closed-loop maximum (wrk) unchanged within the noise.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

pub struct MiMalloc;

// SAFETY: mimalloc returns blocks of at least the requested size, aligned as asked (a word
// by construction, or through the `_aligned` functions), or null; `dealloc` and `realloc` get
// blocks it made, and `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc accepts any size.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract); the
        // new block keeps the alignment the old one was asked for.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment comes back aligned, writable, and keeps its bytes through
    /// `realloc` (the plain and the aligned paths both).
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..300).chain([1000, 4096, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every block is freed with the layout it was made with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == i as u8));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
