//! Writing events to the ring buffer: the record a program fills, the owner it names (by
//! reference, never copied: see `NO_OWNER`), the flow's idle times, and the wakeup policy.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns, generated,
};
use tracer_ebpf::{FlowEvent, ListenerKey, SockOwner, counter, flag};

use crate::activity::may_have_activity;
use crate::maps::{
    ACTIVITY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, EVENTS, FLOWS, LISTENERS,
    WAKEUP_BYTES, count, netns_watched,
};
use crate::sock::Tuple;

#[derive(Clone, Copy, Default)]
pub(crate) struct Record {
    pub(crate) kind: u8,
    pub(crate) cookie: u64,
    pub(crate) netns: u32,
    pub(crate) old_state: u8,
    pub(crate) new_state: u8,
    pub(crate) detail: i32,
    pub(crate) flags: u16,
    pub(crate) ttl: u8,
    pub(crate) peer_ttl: u8,
    /// When it happened; 0: now.
    pub(crate) ts_ns: u64,
    /// Initial sequence numbers, valid as `flags` says (`flag::ISN_SENT`, `ISN_RECEIVED`).
    pub(crate) isn_sent: u32,
    pub(crate) isn_received: u32,
}

// Owners are passed to `emit` by reference to where they live (a map value, or NO_OWNER),
// never copied onto a caller's stack: verifiers before 6.18 count the combined stack of a
// call chain against 512 bytes. And no subprogram branches on a constant its caller passed
// or returns a constant its caller branches on: Linux 6.1's verifier cannot trace such a
// value's precision across the call and then keeps every state apart (hundreds of
// thousands of instructions verified instead of tens).

/// Stores a field as one store of its own. LLVM merges adjacent zero stores into a call to
/// `memset`, which this target runs (and its verifiers walk) byte by byte in a loop; a
/// volatile store is never merged.
#[inline(always)]
pub(crate) fn put<T: Copy>(field: &mut T, value: T) {
    // SAFETY: a plain store through a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(field, value) }
}

/// No owner: every field zero, no `OWNER_KNOWN` flag.
pub(crate) static NO_OWNER: SockOwner = SockOwner {
    cgroup_id: 0,
    pid: 0,
    tid: 0,
    uid: 0,
    flags: 0,
    _pad: 0,
    comm: [0; 16],
};

/// Writes the current task as a socket owner in place; only meaningful in process context
/// (connect, listen).
#[inline(always)]
pub(crate) fn set_current_owner(owner: &mut SockOwner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without arguments.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    owner.pid = (pid_tgid >> 32) as u32;
    owner.tid = pid_tgid as u32;
    owner.uid = bpf_get_current_uid_gid() as u32;
    owner.flags = flag::OWNER_KNOWN;
    owner._pad = 0;
    // Straight into place: aya's wrapper zeroes a buffer first (a byte loop on this target)
    // and copies it; the helper itself zeroes the destination when it fails.
    // SAFETY: the helper writes at most `comm.len()` bytes into the owner's own array.
    unsafe {
        generated::bpf_get_current_comm(owner.comm.as_mut_ptr().cast(), owner.comm.len() as u32)
    };
}

/// The owner recorded in a flow's slot (NO_OWNER without a slot).
#[inline(always)]
pub(crate) fn flow_owner(cookie: u64) -> &'static SockOwner {
    // SAFETY: a live map value, read at once by `emit`.
    match unsafe { FLOWS.get(&cookie) } {
        Some(slot) => &slot.owner,
        None => &NO_OWNER,
    }
}

/// The process listening on a (netns, port), as remembered at listen(); NO_OWNER if none.
#[inline(always)]
pub(crate) fn listener(key: &ListenerKey) -> &'static SockOwner {
    // SAFETY: a live map value, read at once by the caller.
    unsafe { LISTENERS.get(key) }.unwrap_or(&NO_OWNER)
}

/// The listener key of a (netns, port).
#[inline(always)]
pub(crate) fn listener_key(netns: u32, port: u16) -> ListenerKey {
    ListenerKey {
        netns,
        port,
        _pad: 0,
    }
}

/// Writes the wire form of a record in place (no copy on the stack, which the verifier
/// limits to 512 bytes across calls); `now` is when it is sent.
#[inline(always)]
pub(crate) fn write_event(
    out: &mut FlowEvent,
    record: &Record,
    tuple: &Tuple,
    owner: &SockOwner,
    now: u64,
) {
    write_activity(out, record.cookie, now);
    out.ts_ns = if record.ts_ns != 0 { record.ts_ns } else { now };
    out.cookie = record.cookie;
    out.cgroup_id = owner.cgroup_id;
    out.netns = record.netns;
    out.pid = owner.pid;
    out.tid = owner.tid;
    out.uid = owner.uid;
    out.detail = record.detail;
    out.kind = record.kind;
    out.family = tuple.family as u8;
    out.old_state = record.old_state;
    out.new_state = record.new_state;
    out.local_port = tuple.local_port;
    out.remote_port = tuple.remote_port;
    out.flags = record.flags | owner.flags;
    out.ttl = record.ttl;
    out.peer_ttl = record.peer_ttl;
    out.local_addr = tuple.local_addr;
    out.remote_addr = tuple.remote_addr;
    out.comm = owner.comm;
    out._pad = 0;
    out.isn_sent = record.isn_sent;
    out.isn_received = record.isn_received;
}

/// Submit flags: no wakeup, unless the unread data passed the wakeup mark.
#[inline(always)]
pub(crate) fn wakeup_flag() -> u64 {
    // SAFETY: reading our own read-only global.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    if wakeup_bytes != 0 && EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Not inlined: one copy per program keeps the programs' combined stack under the
/// verifier's 512-byte limit.
#[inline(never)]
pub(crate) fn emit(record: &Record, tuple: &Tuple, owner: &SockOwner) {
    if !netns_watched(record.netns) {
        return;
    }
    // Losses are counted, and reported by userspace (no logging here: aya-log's code in
    // every program multiplies the verifier's work, and start-up time with it).
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the reserved record, every field written below before it is submitted.
    write_event(
        unsafe { &mut *entry.as_mut_ptr() },
        record,
        tuple,
        owner,
        now,
    );
    entry.submit(wakeup_flag());
}

/// What a tracked flow's activity record says, for an event (see `FlowEvent::idle_ms` and
/// `FlowEvent::tx_class`): idle times (`u32::MAX` each when the flow is not tracked) and
/// first payload classes (0 each), from one lookup.
#[inline(always)]
pub(crate) fn write_activity(out: &mut FlowEvent, cookie: u64, now: u64) {
    let ms = |ns: u64| (ns / 1_000_000).min(u64::from(u32::MAX - 1)) as u32;
    (out.idle_ms, out.gap_ms, out.resumed_ms) = (u32::MAX, u32::MAX, u32::MAX);
    (out.tx_class, out.rx_class) = (0, 0);
    if cookie == 0 || !may_have_activity(cookie) {
        return;
    }
    // SAFETY: fields are read at once.
    let Some(a) = (unsafe { ACTIVITY.get(&cookie) }) else {
        return;
    };
    out.idle_ms = ms(now.saturating_sub(a.last_rx_ns.max(a.last_tx_ns)));
    (out.tx_class, out.rx_class) = (a.tx_class, a.rx_class);
    if a.resumed_ns != 0 {
        out.gap_ms = ms(a.gap_ns);
        out.resumed_ms = ms(now.saturating_sub(a.resumed_ns));
    }
}

/// Emits an event owned by the process listening on the tuple's local port in the record's
/// netns (a half-open handshake, or a listener's own RST).
#[inline(always)]
pub(crate) fn emit_for_listener(record: &Record, tuple: &Tuple) {
    emit(
        record,
        tuple,
        listener(&listener_key(record.netns, tuple.local_port)),
    );
}
