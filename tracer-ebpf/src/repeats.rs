//! Repeats counted in the kernel (`REPEATS`): refused connects and RSTs without a socket that
//! repeat one sent within the window cost an atomic add instead of a record (see
//! `tracer_ebpf::RepeatKey`).

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use tracer_ebpf::{RepeatCount, RepeatKey, SockOwner, counter, kind, slot};

use crate::hints;
use crate::maps::{
    BPF_NOEXIST, COUNTED_HINT, COUNTED_HINT_SLOTS, FLOWS, REPEAT_WINDOW_NS, REPEATS, count,
};
use crate::sock::Tuple;

/// Counts an occurrence of `key` that repeats the one sent in full within the window
/// (`REPEAT_WINDOW_NS`): true when it was counted and must not be sent. The first occurrence
/// of a key opens its window and is sent, and so is the first after the window, which opens
/// the next. Inlined: its answer is branched on (see the note on `emit`'s owner).
#[inline(always)]
pub(crate) fn counted_as_repeat(key: &RepeatKey, owner: &SockOwner, client_port: u16) -> bool {
    // SAFETY: reading our own read-only global.
    let window = unsafe { core::ptr::read_volatile(&raw const REPEAT_WINDOW_NS) };
    if window == 0 {
        return false;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(entry) = REPEATS.get_ptr_mut(key) {
        // SAFETY: a live map value; the count is only ever added to atomically.
        let entry = unsafe { &mut *entry };
        if now.saturating_sub(entry.active_ns) >= window {
            // Idle: userspace removes it once it has read the final count; never written
            // again, sent in full until then.
            return false;
        }
        entry.active_ns = now;
        if now.saturating_sub(entry.window_start_ns) >= window {
            entry.window_start_ns = now;
            return false;
        }
        if entry.counted == 0 {
            entry.first_ns = now;
        }
        // Atomic: other CPUs count into the same entry. (The bpf target has no
        // compare-and-swap, so core's atomic types lack fetch_add; the intrinsic becomes the
        // BPF atomic add instruction.)
        // SAFETY: an aligned u64 in a live map value.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut entry.counted,
                1,
            )
        };
        entry.last_ns = now;
        entry.last_client_port = client_port;
        return true;
    }
    let entry = RepeatCount {
        window_start_ns: now,
        active_ns: now,
        first_ns: 0,
        last_ns: 0,
        counted: 0,
        owner: *owner,
        last_client_port: client_port,
        _pad: [0; 6],
    };
    // BPF_NOEXIST: another CPU may have opened the window a moment ago (then both are sent).
    // SAFETY: the value is not kept.
    if REPEATS.insert(key, &entry, BPF_NOEXIST).is_err() && unsafe { REPEATS.get(key) }.is_none() {
        count(counter::REPEAT_TABLE_FULL);
    }
    false
}

/// A RST answering the SYN of a quiet flow (a refused connect): counted instead of sent when
/// it repeats one sent within the window; the flow's later events are then not sent either.
#[inline(always)]
pub(crate) fn refusal_counted(
    cookie: u64,
    tuple: &Tuple,
    netns: u32,
    ttl: u8,
    peer_ttl: u8,
) -> bool {
    let Some(flow) = FLOWS.get_ptr_mut(&cookie) else {
        return false;
    };
    // SAFETY: a live map value, written only by this flow's own events.
    let flow = unsafe { &mut *flow };
    if flow.shipped != slot::QUIET {
        // Already reported (a SYN retransmitted first): its end is reported in full.
        return false;
    }
    let key = RepeatKey {
        local_addr: tuple.local_addr,
        remote_addr: tuple.remote_addr,
        netns,
        pid: flow.owner.pid,
        detail: 0,
        service_port: tuple.remote_port,
        kind: kind::RESET_RECEIVED,
        family: tuple.family as u8,
        ttl,
        peer_ttl,
        flags: 0,
    };
    if !counted_as_repeat(&key, &flow.owner, tuple.local_port) {
        return false;
    }
    // Counted before anything can look for it (see `hints`).
    hints::add(&COUNTED_HINT, COUNTED_HINT_SLOTS, cookie, 1);
    flow.shipped = slot::COUNTED;
    true
}
