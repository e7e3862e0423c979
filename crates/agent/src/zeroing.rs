//! The agent's allocator: every heap block is wiped before it is given back. Requests carry
//! secrets through the agent (a git password in one command's environment, file contents),
//! and the agent's memory is part of every memory snapshot: freed blocks must not keep them.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct Zeroing;

fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: callers pass a block they own of at least `len` bytes; explicit_bzero writes
    // zeros there and, unlike a plain memset, is not removed as a dead store before free.
    unsafe { libc::explicit_bzero(ptr.cast(), len) }
}

// SAFETY: every method delegates to the system allocator with the same layout; blocks are
// wiped while still owned, before being returned.
unsafe impl GlobalAlloc for Zeroing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        wipe(ptr, layout.size());
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A moving realloc would free the old block unwiped: allocate, copy, wipe, free.
        // SAFETY: `new_size` is non-zero and fits `layout.align()` (GlobalAlloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero layout.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` is ours with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_realloc() {
        let a = Zeroing;
        let l = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: a valid layout; the block is used within its size and freed with the
        // layout it has at that point.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            for i in 0..16 {
                *p.add(i) = i as u8;
            }
            let q = a.realloc(p, l, 64);
            assert!(!q.is_null());
            for i in 0..16 {
                assert_eq!(*q.add(i), i as u8);
            }
            a.dealloc(q, Layout::from_size_align(64, 8).unwrap());
        }
    }
}
