//! Counting hints: small arrays that count, per slot of cookies (their low bits; cookies are
//! handed out in consecutive runs, so those spread them), how many entries a large hash table
//! may hold for them. Counted up before an entry is made and down once it is gone: 0 means
//! certainly none, so the common case skips a lookup in the large table (a cache miss each);
//! a non-zero count only means "look" (a collision, or a count left behind, costs a lookup,
//! never an answer). Small enough to stay in cache.

use aya_ebpf::maps::Array;

/// The counter of `cookie`'s slot in `hints` (`slots`: its size, a power of two).
#[inline(always)]
fn counter(hints: &Array<u32>, slots: u32, cookie: u64) -> Option<*mut u32> {
    hints.get_ptr_mut(cookie as u32 & (slots - 1))
}

/// Adds `delta` to `cookie`'s counter (`u32::MAX` takes one away); atomic: other CPUs count
/// into it too.
#[inline(always)]
pub(crate) fn add(hints: &Array<u32>, slots: u32, cookie: u64, delta: u32) {
    if let Some(counter) = counter(hints, slots, cookie) {
        // SAFETY: an aligned u32 in a live map value; the intrinsic becomes the BPF atomic
        // add instruction (no fetch: every kernel has it).
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                counter, delta,
            )
        };
    }
}

/// Whether the table may hold an entry for `cookie` (false: it certainly holds none).
#[inline(always)]
pub(crate) fn may_have(hints: &Array<u32>, slots: u32, cookie: u64) -> bool {
    // SAFETY: the value is read at once.
    counter(hints, slots, cookie).is_some_and(|counter| unsafe { *counter } != 0)
}
