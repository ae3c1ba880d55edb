//! The mark a RST leaves for `tcp_receive_reset`, which runs a moment later on the same path:
//! the TTL it arrived with, in a direct-mapped array (one store and one load, where an LRU
//! hash cost an insert, a lookup and a delete per refused connect). Each entry holds the
//! socket's key (its cookie, or its address before Linux 5.12) so a reader only takes its
//! own mark; one overwritten before it is read (another socket with the same low bits in
//! between) is simply not there: the TTL is unknown. Only a mark whose loss costs nothing
//! but a detail belongs here: two CPUs refusing connects at the same rate allocate cookies
//! in step (each from its own batch of 4,096), so their low bits collide far more often than
//! chance would have it. (A refusal counted as a repeat was marked here for its error
//! reports once; a lost mark sent a report, which became a second, ownerless
//! `connect_refused`: the slot itself now says it, see `tracer_ebpf::slot::COUNTED`.)

use crate::maps::{MARK_SLOTS, RST_TTL};

/// The low 56 bits of a key: cookies stay far below them, and kernel addresses differ in them.
const KEY_BITS: u64 = (1 << 56) - 1;

#[inline(always)]
fn slot(key: u64) -> u32 {
    key as u32 & (MARK_SLOTS - 1)
}

/// Remembers the TTL of a RST that arrived for socket `key`.
#[inline(always)]
pub(crate) fn mark_rst_ttl(key: u64, ttl: u8) {
    if let Some(entry) = RST_TTL.get_ptr_mut(slot(key)) {
        // SAFETY: a live array value; one aligned 8-byte store.
        unsafe { *entry = (key << 8) | u64::from(ttl) };
    }
}

/// The TTL of the RST that just arrived for socket `key` (0: unknown).
#[inline(always)]
pub(crate) fn rst_ttl(key: u64) -> u8 {
    // SAFETY: the value is read at once.
    match RST_TTL.get(slot(key)).map(|entry| *entry) {
        Some(entry) if entry >> 8 == key & KEY_BITS => entry as u8,
        _ => 0,
    }
}
