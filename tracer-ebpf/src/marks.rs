//! Marks a socket leaves for a program that runs a moment later on the same path (the TTL of
//! a RST for `tcp_receive_reset`, a refusal counted as a repeat for its error reports), in
//! direct-mapped arrays: one store and one load, where an LRU hash cost an insert, a lookup
//! and a delete per refused connect. Each entry holds the socket's key (its cookie, or its
//! address before Linux 5.12) so a reader only takes its own mark; one overwritten before it
//! is read (another socket with the same low bits in between, a moment later) is simply not
//! there, which the readers already allow for (TTL unknown; an error report sent).

use crate::maps::{COUNTED_ERRORS, MARK_SLOTS, RST_TTL};

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

/// Marks socket `key`'s refusal as counted.
#[inline(always)]
pub(crate) fn mark_counted(key: u64) {
    if let Some(entry) = COUNTED_ERRORS.get_ptr_mut(slot(key)) {
        // SAFETY: a live array value; one aligned 8-byte store.
        unsafe { *entry = key };
    }
}

/// Whether socket `key`'s refusal was counted.
#[inline(always)]
pub(crate) fn counted(key: u64) -> bool {
    // SAFETY: the value is read at once.
    COUNTED_ERRORS
        .get(slot(key))
        .is_some_and(|entry| *entry == key)
}

/// Takes socket `key`'s mark away (its socket is closed: a later connect() on it is a new
/// attempt).
#[inline(always)]
pub(crate) fn clear_counted(key: u64) {
    if let Some(entry) = COUNTED_ERRORS.get_ptr_mut(slot(key)) {
        // SAFETY: a live array value; one aligned 8-byte store.
        unsafe { *entry = 0 };
    }
}
