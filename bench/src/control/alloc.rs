//! A counting global allocator: the exact heap bytes a data structure
//! holds, without sampling or guessing from RSS.
//!
//! The count is per thread (a thread-local that needs no allocation), so
//! the etcd client's and tokio's threads do not blur a measurement on the
//! main thread. Counting costs one thread-local add per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting what each thread allocates and frees.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    // `try_with`: during thread teardown the slot may be gone; skip then.
    let _ = NET.try_with(|n| n.set(n.get() + delta));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only a thread-local integer.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Heap bytes allocated minus freed by this thread so far.
pub fn thread_net_bytes() -> i64 {
    NET.try_with(Cell::get).unwrap_or(0)
}

/// Runs `build` and returns what it built with the heap bytes the result
/// still holds (temporaries freed inside `build` do not count).
pub fn retained<T>(build: impl FnOnce() -> T) -> (T, i64) {
    let before = thread_net_bytes();
    let v = build();
    (v, thread_net_bytes() - before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_kept_not_what_is_freed() {
        let (v, bytes) = retained(|| {
            let tmp = vec![0u8; 10_000];
            drop(tmp);
            Vec::<u64>::with_capacity(1000)
        });
        assert_eq!(v.capacity(), 1000);
        assert_eq!(bytes, 8000);
        let before = thread_net_bytes();
        drop(v);
        assert_eq!(thread_net_bytes() - before, -8000);
    }
}
