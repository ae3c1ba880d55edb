//! What the collector reads from the kernel's tables, as traits: the kernel adapter
//! (`kernel::loader`) implements them, and the stages above take them, so correlation and
//! idle checks are tested without a kernel.

use tracer_ebpf::{FlowActivity, FlowSlot, RepeatCount, RepeatKey};

/// Reads the kernel's idle-tracking records; implemented over the kernel maps.
pub trait ActivitySource {
    /// Calls `each` with every flow the kernel tracks activity for.
    fn scan(&self, each: &mut dyn FnMut(u64, &FlowActivity));
    /// The kernel's slot of a flow (owner, recorded state changes), if it has one.
    fn slot(&self, cookie: u64) -> Option<FlowSlot>;
}

/// Where the repeat table is read (the kernel's map; a fake in the tests).
pub trait RepeatSource {
    /// Calls `each` with every entry of the table.
    fn repeats(&self, each: &mut dyn FnMut(&RepeatKey, &RepeatCount));
    /// Removes an entry whose window is over.
    fn forget(&mut self, key: &RepeatKey);
}

/// The kernel's flow slots, for the sweep of slots whose end it never reported (see
/// `kernel::stale`).
pub trait SlotSource {
    /// Starts a sweep: removes the stale slots it can judge at once and their activity
    /// records, and asks about the others off the caller's thread; returns how many went.
    fn expire_slots(&mut self, now_ns: u64, max_age: std::time::Duration) -> u64;
    /// Removes the slots an answer that came back since condemns (never waits); returns how
    /// many went.
    fn collect_expired(&mut self, now_ns: u64, max_age: std::time::Duration) -> u64;
}
