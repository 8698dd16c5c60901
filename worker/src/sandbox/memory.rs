//! The function's memory budget. V8's heap limit covers JavaScript objects
//! only; ArrayBuffer backing stores live outside it, so they get their own
//! counting allocator with the same budget (the cgroup is the backstop for
//! everything else, WebAssembly memories are capped by page count).

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use deno_runtime::deno_core::v8;

pub struct OffHeap {
    used: AtomicUsize,
    limit: usize,
    /// Allocations refused because they would exceed `limit`.
    pub refused: AtomicU64,
}

impl OffHeap {
    fn reserve(&self, len: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(len).filter(|n| *n <= self.limit) else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => used = actual,
            }
        }
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

unsafe extern "C" fn allocate(state: &OffHeap, len: usize) -> *mut c_void {
    if !state.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: calloc with a non-zero size; V8 requires zeroed memory here.
    let ptr = unsafe { libc::calloc(len.max(1), 1) };
    if ptr.is_null() {
        state.release(len);
    }
    ptr
}

unsafe extern "C" fn allocate_uninitialized(state: &OffHeap, len: usize) -> *mut c_void {
    if !state.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: malloc with a non-zero size.
    let ptr = unsafe { libc::malloc(len.max(1)) };
    if ptr.is_null() {
        state.release(len);
    }
    ptr
}

unsafe extern "C" fn free(state: &OffHeap, data: *mut c_void, len: usize) {
    // SAFETY: V8 hands back a pointer this allocator returned, with its size.
    unsafe { libc::free(data) };
    state.release(len);
}

unsafe extern "C" fn drop_state(state: *const OffHeap) {
    // SAFETY: the pointer came from Arc::into_raw in `allocator` and V8 drops
    // the allocator exactly once.
    drop(unsafe { Arc::from_raw(state) });
}

static VTABLE: v8::RustAllocatorVtable<OffHeap> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_state,
};

/// A V8 ArrayBuffer allocator that refuses to go over `limit` bytes in total.
pub fn allocator(limit: usize) -> (Arc<OffHeap>, v8::UniqueRef<v8::Allocator>) {
    let state = Arc::new(OffHeap {
        used: AtomicUsize::new(0),
        limit,
        refused: AtomicU64::new(0),
    });
    let raw = Arc::into_raw(state.clone());
    // SAFETY: `raw` stays valid until V8 calls `drop_state`, which releases
    // the reference taken here; the vtable is 'static.
    let allocator = unsafe { v8::new_rust_allocator(raw, &VTABLE) };
    (state, allocator)
}

/// V8 flags that must be set before the first isolate exists.
pub fn v8_flags(memory_mb: u32) -> Vec<String> {
    let mut flags = vec!["fn-worker".to_owned()];
    if memory_mb > 0 {
        // 64 KiB pages: a WebAssembly memory can grow to the budget, no more.
        flags.push(format!("--wasm-max-mem-pages={}", memory_mb as u64 * 16));
    }
    flags
}
