//! shuffletrace kernel programs: BTF tracepoints on the TCP state machine, retransmits, resets and
//! socket errors. Each program reads the socket through field offsets that userspace resolved
//! from the running kernel's BTF, keeps only flows on a watched port, and writes one
//! [`FlowEvent`] to the ring buffer.
//!
//! BTF tracepoints (`tp_btf`) are used rather than classic ones because they hand us the typed
//! `struct sock *`, which lets us call `bpf_get_socket_cookie` (the flow key shared with every
//! other program) and needs neither kprobes nor ftrace trampolines.
#![no_std]
#![no_main]
// The BPF atomic add (see `counted_as_repeat`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skc_to_tcp_sock,
        generated,
    },
    macros::{btf_tracepoint, cgroup_skb, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SkBuffContext},
};
use tracer_ebpf::{
    AF_INET, AF_INET6, FlowActivity, FlowEvent, FlowHistory, FlowSlot, Keepalive, KernelOffsets,
    ListenerKey, RepeatCount, RepeatKey, SockOwner, counter, flag, kind, payload_class, slot,
    tcp_state,
};

const IPPROTO_TCP: u16 = 6;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// Field offsets from the running kernel's BTF; written by userspace before load (rodata, so
/// the verifier sees constants and prunes branches for features this kernel lacks).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Unread bytes in the ring buffer at which a submit wakes the reader. Below it records are
/// submitted without a wakeup (a wakeup per event costs ~9 µs) and userspace polls on a timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// A data segment after at least this long without data either way ends an idle period,
/// whose length is recorded (half the NAT idle threshold; set by userspace).
#[unsafe(no_mangle)]
static IDLE_MARK_NS: u64 = 0;

/// Window of the repeat table (see `tracer_ebpf::RepeatKey`): userspace's aggregation window
/// (0: every occurrence is sent).
#[unsafe(no_mangle)]
static REPEAT_WINDOW_NS: u64 = 0;

/// The watched-port set: index = port, non-zero = watched. An array lookup is the cheapest
/// check for unwatched traffic and holds any mix of single ports and ranges.
#[map]
static WATCHED_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Socket cookie -> the flow's owner and quiet-flow record (see `tracer_ebpf::FlowSlot`).
/// Inserted at connect()/accept, removed at TCP_CLOSE. Bounded; a full table is counted
/// (OWNER_TABLE_FULL) and such flows are sent event by event. Userspace sizes it at load.
#[map]
static FLOWS: HashMap<u64, FlowSlot> = HashMap::with_max_entries(131072, 0);

/// (netns, port) of a watched listener -> the process that called listen(): attribution for
/// sockets it accepts, which are created in softirq context.
#[map]
static LISTENERS: HashMap<ListenerKey, SockOwner> = HashMap::with_max_entries(8192, 0);

/// Remote address (see `peer_key`) -> TTL / hop limit its non-RST segments arrive with. A
/// cache: LRU-bounded, an evicted peer only means "TTL unknown" for its next RST.
#[map]
static PEER_TTL: LruHashMap<[u8; 16], u8> = LruHashMap::with_max_entries(16384, 0);

/// Socket cookie -> TTL of the RST that just arrived for it (written by the ingress program,
/// consumed by tcp_receive_reset a moment later). LRU-bounded.
#[map]
static RST_TTL: LruHashMap<u64, u8> = LruHashMap::with_max_entries(4096, 0);

/// Socket cookie -> activity of a watched flow (idle tracking, payload classes). Inserted by
/// the cgroup_skb programs at the flow's first data segment, removed at TCP_CLOSE.
/// Bounded like FLOWS; a full table is counted (ACTIVITY_TABLE_FULL).
#[map]
static ACTIVITY: HashMap<u64, FlowActivity> = HashMap::with_max_entries(131072, 0);

/// One `FlowSlot` per CPU, where a new flow's slot is built before it is inserted (see
/// `ACTIVITY_SCRATCH`).
#[map]
static SLOT_SCRATCH: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(1, 0);

/// One `FlowActivity` per CPU, where a new entry is built before it is inserted: the
/// programs' stack (512 bytes across calls) has no room for it.
#[map]
static ACTIVITY_SCRATCH: PerCpuArray<FlowActivity> = PerCpuArray::with_max_entries(1, 0);

/// Repeated refusals and RSTs without a socket, counted instead of sent (see
/// `tracer_ebpf::RepeatKey`). Bounded; when full, occurrences are sent in full and counted
/// (REPEAT_TABLE_FULL). Entries are removed by userspace once their window is over.
#[map]
static REPEATS: HashMap<RepeatKey, RepeatCount> = HashMap::with_max_entries(4096, 0);

/// Cookies of refused connects counted as repeats, whose socket error is reported after the
/// flow's slot is gone (TCP reports it after the CLOSE): that report is not sent either.
/// LRU-bounded; an entry is consumed a moment after it is written.
#[map]
static COUNTED_ERRORS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

/// Per-CPU loss and overflow counters, indexed by `tracer_ebpf::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading our own read-only global.
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) } as usize
    };
}

/// Reads a `T` at `base + off` in kernel memory, and whether it could be read. On a fault
/// (a NULL or stale pointer) the helper zeroes its destination: the value is all zero.
#[inline(always)]
fn read_checked<T>(base: *const u8, off: usize) -> (T, bool) {
    let mut value = MaybeUninit::<T>::uninit();
    // SAFETY: the helper faults safely on a bad address and writes all of `value` either
    // way (zeroes on a fault); T is plain data for which zero is a valid value.
    unsafe {
        let rc = generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            base.wrapping_add(off).cast(),
        );
        (value.assume_init(), rc == 0)
    }
}

/// Reads a `T` at `base + off` in kernel memory; zero when it cannot be read. No branch on
/// the helper's result: each branch per read doubles the paths a verifier walks where it
/// cannot prune them (Linux 6.1 walks over 200,000 instructions for what 6.18 does in
/// 20,000).
#[inline(always)]
fn read<T>(base: *const u8, off: usize) -> T {
    read_checked(base, off).0
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn is_watched(port: u16) -> bool {
    matches!(WATCHED_PORTS.get(port as u32), Some(v) if *v != 0)
}

/// The connection tuple of a socket (struct sock, request_sock or inet_timewait_sock: they all
/// start with struct sock_common).
struct Tuple {
    family: u16,
    local_port: u16,
    remote_port: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
}

/// Ports, then family: the cheap part, enough to decide whether the flow is watched. The
/// port pair comes first: for unwatched traffic (most of it) that read and two array
/// lookups are all it costs.
#[inline(always)]
fn read_ports(sk: *const u8) -> Option<Tuple> {
    // skc_dport (network order) then skc_num (host order), read as one little-endian u32.
    let portpair: u32 = read(sk, offset!(skc_portpair));
    let remote_port = u16::from_be(portpair as u16);
    let mut local_port = (portpair >> 16) as u16;
    if !is_watched(remote_port) {
        if local_port == 0 {
            // The kernel clears skc_num when a socket enters CLOSE (before the tracepoint,
            // and before the RST or error that follows); inet_sport still holds the port.
            // Only full sockets get here: request and time-wait sockets keep skc_num.
            local_port = u16::from_be(read(sk, offset!(inet_sport)));
        }
        if !is_watched(local_port) {
            return None;
        }
    } else if local_port == 0 {
        local_port = u16::from_be(read(sk, offset!(inet_sport)));
    }
    let family: u16 = read(sk, offset!(skc_family));
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(Tuple {
        family,
        local_port,
        remote_port,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    })
}

#[inline(always)]
fn read_addrs(sk: *const u8, tuple: &mut Tuple) -> Option<()> {
    let ok = if tuple.family == AF_INET {
        let (pair, ok) = read_checked::<[u8; 8]>(sk, offset!(skc_addrpair));
        tuple.remote_addr[..4].copy_from_slice(&pair[..4]);
        tuple.local_addr[..4].copy_from_slice(&pair[4..]);
        ok
    } else {
        let (remote, remote_ok) = read_checked(sk, offset!(skc_v6_daddr));
        let (local, local_ok) = read_checked(sk, offset!(skc_v6_rcv_saddr));
        tuple.remote_addr = remote;
        tuple.local_addr = local;
        remote_ok & local_ok
    };
    ok.then_some(())
}

#[inline(always)]
fn read_netns_of(net: *const u8) -> u32 {
    // A NULL `net` reads as 0 (the read faults).
    read(net, offset!(net_ns_inum))
}

#[inline(always)]
fn read_sock_netns(sk: *const u8) -> u32 {
    read_netns_of(read(sk, offset!(skc_net)))
}

#[inline(always)]
fn is_tcp_sock(sk: *const u8) -> bool {
    let protocol = if offset!(sk_protocol_size) == 1 {
        u16::from(read::<u8>(sk, offset!(sk_protocol)))
    } else {
        read::<u16>(sk, offset!(sk_protocol))
    };
    protocol == IPPROTO_TCP
}

#[inline(always)]
fn ready() -> bool {
    offset!(ready) != 0
}

#[inline(always)]
fn cookie_of(sk: *const u8) -> u64 {
    if offset!(flow_key_is_address) != 0 {
        // Linux before 5.12: tracing programs cannot ask for the cookie (the branch is pruned
        // there, so the helper call is never seen by that verifier). The socket's address
        // keys the flow while it lives; its slot goes at TCP_CLOSE, before it can be reused.
        return sk as u64;
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer; the helper accepts NULL.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// Writes the current task as a socket owner in place; only meaningful in process context
/// (connect, listen).
#[inline(always)]
fn set_current_owner(owner: &mut SockOwner) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: helper without arguments.
    owner.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    owner.pid = (pid_tgid >> 32) as u32;
    owner.tid = pid_tgid as u32;
    owner.uid = bpf_get_current_uid_gid() as u32;
    owner.flags = flag::OWNER_KNOWN;
    owner._pad = 0;
    owner.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The owner recorded in a flow's slot (NO_OWNER without a slot).
#[inline(always)]
fn flow_owner(cookie: u64) -> &'static SockOwner {
    // SAFETY: a live map value, read at once by `emit`.
    match unsafe { FLOWS.get(&cookie) } {
        Some(slot) => &slot.owner,
        None => &NO_OWNER,
    }
}

#[derive(Clone, Copy, Default)]
struct Record {
    kind: u8,
    cookie: u64,
    netns: u32,
    old_state: u8,
    new_state: u8,
    detail: i32,
    flags: u16,
    ttl: u8,
    peer_ttl: u8,
    /// When it happened; 0: now.
    ts_ns: u64,
}

/// Writes the wire form of a record in place (no copy on the stack, which the verifier
/// limits to 512 bytes across calls); `now` is when it is sent.
#[inline(always)]
fn write_event(out: &mut FlowEvent, record: &Record, tuple: &Tuple, owner: &SockOwner, now: u64) {
    let (idle_ms, gap_ms, resumed_ms) = idle_times(record.cookie, now);
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
    out.idle_ms = idle_ms;
    out.gap_ms = gap_ms;
    out.resumed_ms = resumed_ms;
    out._pad = 0;
}

/// Submit flags: no wakeup, unless the unread data passed the wakeup mark.
#[inline(always)]
fn wakeup_flag() -> u64 {
    // SAFETY: reading our own read-only global.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    if wakeup_bytes != 0 && EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

// Owners are passed to `emit` by reference to where they live (a map value, or NO_OWNER),
// never copied onto a caller's stack: verifiers before 6.18 count the combined stack of a
// call chain against 512 bytes. And no subprogram branches on a constant its caller passed
// or returns a constant its caller branches on: Linux 6.1's verifier cannot trace such a
// value's precision across the call and then keeps every state apart (hundreds of
// thousands of instructions verified instead of tens).

/// No owner: every field zero, no `OWNER_KNOWN` flag.
static NO_OWNER: SockOwner = SockOwner {
    cgroup_id: 0,
    pid: 0,
    tid: 0,
    uid: 0,
    flags: 0,
    _pad: 0,
    comm: [0; 16],
};

/// Not inlined: one copy per program keeps the programs' combined stack under the
/// verifier's 512-byte limit.
#[inline(never)]
fn emit(record: &Record, tuple: &Tuple, owner: &SockOwner) {
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

/// Reads the tuple of a socket and checks the watched-port set; None for unwatched flows.
#[inline(always)]
fn watched_tuple(sk: *const u8) -> Option<Tuple> {
    let mut tuple = read_ports(sk)?;
    if read_addrs(sk, &mut tuple).is_none() {
        count(counter::READ_FAILED);
        return None;
    }
    Some(tuple)
}

/// The process listening on a (netns, port), as remembered at listen(); NO_OWNER if none.
#[inline(always)]
fn listener(key: &ListenerKey) -> &'static SockOwner {
    // SAFETY: a live map value, read at once by the caller.
    unsafe { LISTENERS.get(key) }.unwrap_or(&NO_OWNER)
}

/// The listener key of a (netns, port).
#[inline(always)]
fn listener_key(netns: u32, port: u16) -> ListenerKey {
    ListenerKey {
        netns,
        port,
        _pad: 0,
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    if ready() {
        on_state_change(sk, old_state as u8, new_state as u8);
    }
    0
}

#[inline(always)]
fn on_state_change(sk: *const u8, old_state: u8, new_state: u8) {
    // Ports first (most sockets stop here), addresses only when something is sent.
    let Some(mut tuple) = read_ports(sk) else {
        return;
    };
    // Other protocols (SCTP, MPTCP subflows' parents) change state too; checked after the
    // ports, which rule out most sockets more cheaply.
    if !is_tcp_sock(sk) {
        return;
    }
    let cookie = cookie_of(sk);
    if new_state == tcp_state::SYN_SENT {
        open_connect(cookie, sk, old_state, new_state);
        return;
    }
    if new_state == tcp_state::SYN_RECV {
        // A child socket cloned from a listener. Until 6.18 this fires before the clone gets
        // its own cookie and remote port (inet_csk_clone_lock sets them after): it still
        // carries the listener's. The flow is opened when it reaches ESTABLISHED, a moment
        // later, under its own cookie.
        return;
    }
    if new_state == tcp_state::ESTABLISHED && old_state == tcp_state::SYN_RECV {
        open_accepted(cookie, sk, tuple.local_port);
        return;
    }
    // The error that closes a socket is set before the CLOSE transition and before the owner
    // is woken; by the time inet_sk_error_report fires, a non-blocking connect()er may have
    // read and cleared it (getsockopt SO_ERROR). Read it here, where it is still there.
    let mut flags = 0;
    let detail = if new_state == tcp_state::CLOSE {
        let (err, soft) = socket_error(sk);
        // A connect that ends after soft errors (ICMP) failed because of them.
        if soft && old_state != tcp_state::SYN_SENT {
            0
        } else {
            if soft {
                flags |= flag::SOFT_ERROR;
            }
            err
        }
    } else {
        0
    };
    let mut record = Record {
        kind: kind::STATE_CHANGE,
        cookie,
        old_state,
        new_state,
        detail,
        flags,
        ..Default::default()
    };
    let quiet = note_quiet(cookie, &mut record);
    match quiet {
        Quiet::Recorded => return,
        Quiet::Counted => {
            if new_state == tcp_state::CLOSE {
                forget_flow(cookie);
            }
            return;
        }
        _ => {}
    }
    if read_addrs(sk, &mut tuple).is_none() {
        count(counter::READ_FAILED);
        return;
    }
    let netns = read_sock_netns(sk);
    record.netns = netns;
    let key = listener_key(netns, tuple.local_port);
    // Every decision is taken before the first call below, and the code after each call is
    // specialised (CLOSING) instead of branching again on the states: see the note on
    // `emit`'s owner.
    if old_state == tcp_state::CLOSE && new_state == tcp_state::LISTEN {
        // listen(): remember the server process for the sockets it will accept.
        remember_listener(&key);
        emit(&record, &tuple, listener(&key));
    } else if new_state == tcp_state::CLOSE {
        if old_state == tcp_state::LISTEN {
            let _ = LISTENERS.remove(&key);
        }
        report_change::<true>(&record, &tuple, matches!(quiet, Quiet::Ends));
    } else {
        report_change::<false>(&record, &tuple, matches!(quiet, Quiet::Ends));
    }
}

/// Sends a state change (after what the flow recorded while quiet, when it stops being
/// quiet); at CLOSE the flow's kernel records go.
#[inline(always)]
fn report_change<const CLOSING: bool>(record: &Record, tuple: &Tuple, ends_quiet: bool) {
    if ends_quiet {
        ship_quiet(record.cookie, tuple);
    }
    emit(record, tuple, flow_owner(record.cookie));
    if CLOSING {
        forget_flow(record.cookie);
    }
}

/// At TCP_CLOSE: the flow's slot and activity record go.
#[inline(always)]
fn forget_flow(cookie: u64) {
    let _ = ACTIVITY.remove(&cookie);
    let _ = FLOWS.remove(&cookie);
}

/// listen(): remembers the current process as the owner of the sockets the listener on
/// `port` will accept. Not inlined: the owner is built in this frame only.
#[inline(never)]
fn remember_listener(key: &ListenerKey) {
    let mut owner = SockOwner::default();
    set_current_owner(&mut owner);
    if LISTENERS.insert(key, &owner, 0).is_err() {
        count(counter::LISTENER_TABLE_FULL);
    }
}

/// connect(): a new flow owned by the calling process (process context). Not inlined: it
/// keeps the state change program's stack down.
#[inline(never)]
fn open_connect(cookie: u64, sk: *const u8, old_state: u8, new_state: u8) {
    open_flow(cookie, sk, old_state, new_state, 0, |owner, _| {
        set_current_owner(owner);
    });
}

/// A child socket cloned from a listener (softirq) that completed its handshake: a new flow
/// owned by the listener's process, opened (LISTEN -> SYN_RECV) and established now.
#[inline(never)]
fn open_accepted(cookie: u64, sk: *const u8, local_port: u16) {
    open_flow(
        cookie,
        sk,
        tcp_state::LISTEN,
        tcp_state::SYN_RECV,
        flag::ACCEPTED,
        |owner, netns| {
            *owner = *listener(&listener_key(netns, local_port));
            owner.flags |= flag::ACCEPTED;
        },
    );
}

/// Creates the flow's slot, quiet (nothing sent), with the owner `set_owner` writes. The
/// slot is built in a per-CPU scratch entry, not on the stack.
#[inline(always)]
fn open_flow(
    cookie: u64,
    sk: *const u8,
    old_state: u8,
    new_state: u8,
    flags: u16,
    set_owner: impl FnOnce(&mut SockOwner, u32),
) {
    let Some(slot) = SLOT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own scratch entry; every field is written below.
    let slot = unsafe { &mut *slot };
    let netns = read_sock_netns(sk);
    set_owner(&mut slot.owner, netns);
    slot.netns = netns;
    slot.shipped = slot::QUIET;
    slot.opened_old = old_state;
    slot.opened_new = new_state;
    slot.latest_old = 0;
    slot.latest_new = 0;
    slot._pad = [0; 7];
    // SAFETY: helper without arguments.
    slot.opened_ns = unsafe { bpf_ktime_get_boot_ns() };
    // An accepted flow is opened as it is established (see `open_accepted`).
    slot.established_ns = if flags & flag::ACCEPTED != 0 {
        slot.opened_ns
    } else {
        0
    };
    slot.latest_ns = 0;
    if FLOWS.insert(&cookie, &*slot, 0).is_ok() {
        return;
    }
    count(counter::OWNER_TABLE_FULL);
    // Without a slot the flow is reported event by event, starting now.
    let Some(tuple) = watched_tuple(sk) else {
        return;
    };
    let record = Record {
        kind: kind::STATE_CHANGE,
        cookie,
        netns,
        old_state,
        new_state,
        flags,
        ..Default::default()
    };
    emit(&record, &tuple, &slot.owner);
}

/// What a state change means for a quiet flow.
enum Quiet {
    /// Not quiet (already shipped, or no slot): send it.
    No,
    /// Recorded in the slot; nothing to send.
    Recorded,
    /// A clean close: `record` became the flow's summary; send it.
    Summarised,
    /// The flow stops being quiet: send what it recorded, then this change.
    Ends,
    /// A refused connect counted as a repeat: nothing of it is sent.
    Counted,
}

/// Records a state change of a quiet flow, or turns a clean close into its summary.
#[inline(always)]
fn note_quiet(cookie: u64, record: &mut Record) -> Quiet {
    let Some(slot) = FLOWS.get_ptr_mut(&cookie) else {
        return Quiet::No;
    };
    // SAFETY: a live map value, written only by this flow's own events.
    let slot = unsafe { &mut *slot };
    match slot.shipped {
        slot::QUIET => {}
        slot::COUNTED => return Quiet::Counted,
        _ => return Quiet::No,
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    match record.new_state {
        tcp_state::ESTABLISHED if slot.established_ns == 0 => {
            slot.established_ns = now;
            Quiet::Recorded
        }
        // Clean: it was established and closes without an error, after the FIN handshake
        // (ESTABLISHED or CLOSE_WAIT straight to CLOSE is an abort: a RST follows).
        tcp_state::CLOSE
            if record.detail == 0
                && slot.established_ns != 0
                && closes_gracefully(record.old_state) =>
        {
            record.kind = kind::FLOW_SUMMARY;
            record.old_state = slot.opened_new;
            record.detail =
                (now.saturating_sub(slot.opened_ns) / 1_000_000).min(i32::MAX as u64) as i32;
            Quiet::Summarised
        }
        // A connect or handshake that ends without ESTABLISHED, or an error: not clean.
        tcp_state::CLOSE => Quiet::Ends,
        // The peer closes after our ClientHello without a word: it may not speak TLS.
        tcp_state::CLOSE_WAIT if hello_unanswered(cookie) => Quiet::Ends,
        _ if slot.established_ns != 0 => {
            slot.latest_old = record.old_state;
            slot.latest_new = record.new_state;
            slot.latest_ns = now;
            Quiet::Recorded
        }
        _ => Quiet::Ends,
    }
}

/// States a socket closes from after the FIN handshake.
#[inline(always)]
fn closes_gracefully(old_state: u8) -> bool {
    matches!(
        old_state,
        tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSING
            | tcp_state::LAST_ACK
            | tcp_state::TIME_WAIT
    )
}

#[inline(always)]
fn hello_unanswered(cookie: u64) -> bool {
    // SAFETY: fields are read at once.
    unsafe { ACTIVITY.get(&cookie) }
        .is_some_and(|a| payload_class::hello_unanswered(a.tx_class, a.rx_class))
}

/// Whether a flow is quiet: it has a slot and nothing of it was sent yet.
#[inline(always)]
fn is_quiet(cookie: u64) -> bool {
    // SAFETY: the field is read at once.
    unsafe { FLOWS.get(&cookie) }.is_some_and(|flow| flow.shipped == slot::QUIET)
}

/// Sends what a quiet flow recorded (its opening, ESTABLISHED, the first payload classes
/// each way, its latest state change, each with the time it happened) in one
/// `FLOW_HISTORY` record, and reports the flow event by event from now on. Called before the
/// first event of a flow that userspace must see. Not inlined: one copy per program.
#[inline(never)]
fn ship_quiet(cookie: u64, tuple: &Tuple) {
    let Some(slot) = FLOWS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: a live map value; the fields are copied out before anything else.
    let slot = unsafe { &mut *slot };
    if slot.shipped != slot::QUIET {
        return;
    }
    slot.shipped = slot::SHIPPED;
    let Some(mut entry) = EVENTS.reserve::<FlowHistory>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let opening = Record {
        kind: kind::FLOW_HISTORY,
        cookie,
        netns: slot.netns,
        old_state: slot.opened_old,
        new_state: slot.opened_new,
        flags: flag::DEFERRED,
        ts_ns: slot.opened_ns,
        ..Default::default()
    };
    // SAFETY: the reserved record, every field written below before it is submitted.
    let history = unsafe { &mut *entry.as_mut_ptr() };
    write_event(&mut history.event, &opening, tuple, &slot.owner, now);
    history.established_ns = slot.established_ns;
    history.latest_ns = slot.latest_ns;
    history.latest_old = slot.latest_old;
    history.latest_new = slot.latest_new;
    history._pad = 0;
    // SAFETY: fields are copied out at once.
    match unsafe { ACTIVITY.get(&cookie) } {
        Some(a) => {
            history.tx_class = a.tx_class;
            history.rx_class = a.rx_class;
            history.tx_first_ns = a.tx_first_ns;
            history.rx_first_ns = a.rx_first_ns;
        }
        None => {
            history.tx_class = payload_class::NONE;
            history.rx_class = payload_class::NONE;
            history.tx_first_ns = 0;
            history.rx_first_ns = 0;
        }
    }
    entry.submit(wakeup_flag());
}

/// Sends an event of a flow, after what the flow recorded while it was quiet; nothing when
/// the flow's events are not sent (a refused connect counted as a repeat). Not inlined: one
/// copy per program.
#[inline(never)]
fn send_flow_event(record: &Record, tuple: &Tuple) {
    // SAFETY: the field is read at once.
    if unsafe { FLOWS.get(&record.cookie) }.is_some_and(|slot| slot.shipped == slot::COUNTED) {
        return;
    }
    ship_quiet(record.cookie, tuple);
    emit(record, tuple, flow_owner(record.cookie));
}

/// Counts an occurrence of `key` that repeats the one sent in full within the window
/// (`REPEAT_WINDOW_NS`): true when it was counted and must not be sent. The first occurrence
/// of a key opens its window and is sent, and so is the first after the window, which opens
/// the next. Inlined: its answer is branched on (see the note on `emit`'s owner).
#[inline(always)]
fn counted_as_repeat(key: &RepeatKey, owner: &SockOwner, client_port: u16) -> bool {
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
fn refusal_counted(cookie: u64, tuple: &Tuple, netns: u32, ttl: u8, peer_ttl: u8) -> bool {
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
        _pad: 0,
    };
    if !counted_as_repeat(&key, &flow.owner, tuple.local_port) {
        return false;
    }
    flow.shipped = slot::COUNTED;
    let _ = COUNTED_ERRORS.insert(&cookie, &1, 0);
    true
}

/// Idle times of a tracked flow for an event (see `FlowEvent::idle_ms`); `u32::MAX` each
/// when the flow is not tracked.
#[inline(always)]
fn idle_times(cookie: u64, now: u64) -> (u32, u32, u32) {
    let ms = |ns: u64| (ns / 1_000_000).min(u64::from(u32::MAX - 1)) as u32;
    if cookie == 0 {
        return (u32::MAX, u32::MAX, u32::MAX);
    }
    // SAFETY: fields are read at once.
    let Some(a) = (unsafe { ACTIVITY.get(&cookie) }) else {
        return (u32::MAX, u32::MAX, u32::MAX);
    };
    let idle = ms(now.saturating_sub(a.last_rx_ns.max(a.last_tx_ns)));
    if a.resumed_ns == 0 {
        (idle, u32::MAX, u32::MAX)
    } else {
        (idle, ms(a.gap_ns), ms(now.saturating_sub(a.resumed_ns)))
    }
}

/// The socket's keepalive settings and its netns defaults (see `tracer_ebpf::Keepalive`).
#[inline(always)]
fn read_keepalive(sk: *const u8) -> Keepalive {
    let flags: u64 = read(sk, offset!(sk_flags));
    // A NULL `net` reads as zeroes.
    let net: *const u8 = read(sk, offset!(skc_net));
    Keepalive {
        time: read(sk, offset!(tp_keepalive_time)),
        intvl: read(sk, offset!(tp_keepalive_intvl)),
        netns_time: read(net, offset!(net_keepalive_time)),
        netns_intvl: read(net, offset!(net_keepalive_intvl)),
        probes: read(sk, offset!(tp_keepalive_probes)),
        netns_probes: read(net, offset!(net_keepalive_probes)),
        enabled: ((flags >> (offset!(sock_keepopen_bit) & 63)) & 1) as u8,
        _pad: 0,
    }
}

/// Emits a non-state-change event for a full or minimal socket.
#[inline(always)]
fn emit_for_sock(sk: *const u8, event_kind: u8, detail: i32, flags: u16) {
    let Some(tuple) = watched_tuple(sk) else {
        return;
    };
    let state: u8 = read(sk, offset!(skc_state));
    let cookie = cookie_of(sk);
    let (mut ttl, mut peer_ttl) = (0, 0);
    if event_kind == kind::RESET_RECEIVED {
        // The ingress program saw this RST a moment ago, before TCP processed it.
        // SAFETY: the value is copied out at once.
        ttl = unsafe { RST_TTL.get(&cookie) }.copied().unwrap_or(0);
        let _ = RST_TTL.remove(&cookie);
        let peer = peer_key(tuple.family, &tuple.remote_addr);
        // SAFETY: the value is copied out at once.
        peer_ttl = unsafe { PEER_TTL.get(&peer) }.copied().unwrap_or(0);
    }
    let netns = read_sock_netns(sk);
    if event_kind == kind::RESET_RECEIVED
        && state == tcp_state::SYN_SENT
        && refusal_counted(cookie, &tuple, netns, ttl, peer_ttl)
    {
        return;
    }
    // SAFETY: the value is not kept.
    if event_kind == kind::SOCKET_ERROR && unsafe { COUNTED_ERRORS.get(&cookie) }.is_some() {
        let _ = COUNTED_ERRORS.remove(&cookie);
        return;
    }
    let record = Record {
        ttl,
        peer_ttl,
        kind: event_kind,
        cookie,
        netns,
        old_state: state,
        new_state: state,
        detail,
        flags,
        ..Default::default()
    };
    send_flow_event(&record, &tuple);
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    if ready() {
        let sk: *const u8 = ctx.arg(0);
        let err: i32 = if offset!(retransmit_has_err) != 0 {
            ctx.arg(2)
        } else {
            0
        };
        // One call site: each inlined copy is verified again.
        let (detail, flags) = if err != 0 {
            (-err, 0)
        } else {
            // A SYN retried after an ICMP error carries that error: it is not a silent drop.
            let soft: i32 = read(sk, offset!(sk_err_soft));
            (soft, if soft != 0 { flag::SOFT_ERROR } else { 0 })
        };
        emit_for_sock(sk, kind::RETRANSMIT, detail, flags);
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    if ready() {
        let sk: *const u8 = ctx.arg(0);
        emit_for_sock(sk, kind::RESET_RECEIVED, 0, 0);
    }
    0
}

/// The socket's pending error: `sk_err`, or else `sk_err_soft` (true): ICMP errors during
/// connect are soft on current kernels (the SYN is retried), and a non-blocking connect()er
/// may already have read and cleared `sk_err` (getsockopt SO_ERROR) when the report fires.
#[inline(always)]
fn socket_error(sk: *const u8) -> (i32, bool) {
    let err: i32 = read(sk, offset!(sk_err));
    if err != 0 {
        return (err, false);
    }
    let soft: i32 = read(sk, offset!(sk_err_soft));
    if soft != 0 {
        return (soft, true);
    }
    (queued_error(sk), true)
}

/// The errno of the first extended error queued on the socket (0 if none): an ICMP error
/// is queued and reported before the socket's own error fields are set.
#[inline(always)]
fn queued_error(sk: *const u8) -> i32 {
    let ee_errno = offset!(skb_ee_errno);
    if ee_errno == 0 {
        return 0;
    }
    let head = sk.wrapping_add(offset!(sk_error_queue));
    let skb: *const u8 = read(sk, offset!(sk_error_queue));
    // An empty queue points at itself.
    if skb == head {
        return 0;
    }
    // A NULL `skb` reads as 0.
    read::<u32>(skb, ee_errno) as i32
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if ready() && is_tcp_sock(sk) {
        let (err, soft) = socket_error(sk);
        let flags = if soft { flag::SOFT_ERROR } else { 0 };
        emit_for_sock(sk, kind::SOCKET_ERROR, err, flags);
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    if !ready() {
        return 0;
    }
    // The request socket carries the tuple of the half-open connection (sock_common layout).
    let req: *const u8 = ctx.arg(1);
    let Some(tuple) = watched_tuple(req) else {
        return 0;
    };
    let netns = read_sock_netns(req);
    let record = Record {
        kind: kind::SYNACK_RETRANSMIT,
        cookie: cookie_of(req),
        netns,
        old_state: tcp_state::NEW_SYN_RECV,
        new_state: tcp_state::NEW_SYN_RECV,
        detail: 0,
        flags: flag::ACCEPTED,
        ..Default::default()
    };
    emit(
        &record,
        &tuple,
        listener(&listener_key(netns, tuple.local_port)),
    );
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    if !ready() {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let reason: i32 = if offset!(send_reset_has_reason) != 0 {
        ctx.arg(2)
    } else {
        0
    };
    if !sk.is_null() {
        emit_for_sock(sk, kind::RESET_SENT, reason, 0);
        return 0;
    }
    // No socket (a segment to a port nobody listens on; this tracepoint fires for it since
    // Linux 6.10, older kernels are served by `kfree_skb`).
    reset_without_socket(ctx.arg(1), reason);
    0
}

/// Linux before 6.10 (no `tcp_send_reset` without a socket): a TCP segment that found no
/// socket is dropped with reason NO_SOCKET right after the stack answered it with a RST
/// (unless it was a RST itself). Attached only on those kernels; `no_socket_drop_reason` is
/// that reason's number in this kernel's `enum skb_drop_reason`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let no_socket = offset!(no_socket_drop_reason) as u32;
    if !ready() || no_socket == 0 {
        return 0;
    }
    let reason: u32 = ctx.arg(2);
    if reason != no_socket {
        return 0;
    }
    let skb: *const u8 = ctx.arg(0);
    // UDP drops with the same reason; and no RST answers a RST.
    if segment_protocol_flags(skb) != Some(0) {
        return 0;
    }
    reset_without_socket(skb, 0);
    0
}

/// The RST flag of a received segment (`Some(0)`: a TCP segment without RST), None when the
/// packet is not TCP.
#[inline(always)]
fn segment_protocol_flags(skb: *const u8) -> Option<u8> {
    let head: *const u8 = read(skb, offset!(skb_head));
    let network: u16 = read(skb, offset!(skb_network_header));
    let transport: u16 = read(skb, offset!(skb_transport_header));
    let version: u8 = read(head, network as usize);
    // IPv4's protocol, or IPv6's next header (a TCP header right after the fixed header).
    let protocol: u8 = match version >> 4 {
        4 => read(head, network as usize + 9),
        6 => read(head, network as usize + 6),
        _ => return None,
    };
    if u16::from(protocol) != IPPROTO_TCP {
        return None;
    }
    let flags: u8 = read(head, transport as usize + 13);
    Some(flags & TCP_FLAG_RST)
}

/// A RST the stack sent for a segment that matched no socket: the tuple comes from the packet
/// that provoked it, reversed, since the RST goes back to its sender. Repeats within the
/// window are counted instead of sent.
#[inline(always)]
fn reset_without_socket(skb: *const u8, reason: i32) {
    if let Some((tuple, netns)) = packet_tuple(skb) {
        let key = RepeatKey {
            local_addr: tuple.local_addr,
            remote_addr: tuple.remote_addr,
            netns,
            pid: 0,
            detail: reason,
            service_port: tuple.local_port,
            kind: kind::RESET_SENT,
            family: tuple.family as u8,
            ttl: 0,
            peer_ttl: 0,
            _pad: 0,
        };
        if counted_as_repeat(&key, &NO_OWNER, tuple.remote_port) {
            return;
        }
        let record = Record {
            kind: kind::RESET_SENT,
            cookie: 0,
            netns,
            old_state: tcp_state::CLOSE,
            new_state: tcp_state::CLOSE,
            detail: reason,
            flags: flag::NO_SOCKET,
            ..Default::default()
        };
        emit(&record, &tuple, &NO_OWNER);
    }
}

/// Tuple (this host first) and netns of a received TCP segment.
#[inline(always)]
fn packet_tuple(skb: *const u8) -> Option<(Tuple, u32)> {
    if skb.is_null() {
        return None;
    }
    // Unreadable fields read as zeroes, which match no watched port and no IP version.
    let head: *const u8 = read(skb, offset!(skb_head));
    let network: u16 = read(skb, offset!(skb_network_header));
    let transport: u16 = read(skb, offset!(skb_transport_header));
    let ports: [u8; 4] = read(head, transport as usize);
    let sender_port = u16::from_be_bytes([ports[0], ports[1]]);
    let receiver_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !is_watched(sender_port) && !is_watched(receiver_port) {
        return None;
    }
    let version: u8 = read(head, network as usize);
    let mut tuple = Tuple {
        family: AF_INET,
        local_port: receiver_port,
        remote_port: sender_port,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    match version >> 4 {
        4 => {
            let addrs: [u8; 8] = read(head, network as usize + 12);
            tuple.remote_addr[..4].copy_from_slice(&addrs[..4]);
            tuple.local_addr[..4].copy_from_slice(&addrs[4..]);
        }
        6 => {
            tuple.family = AF_INET6;
            tuple.remote_addr = read(head, network as usize + 8);
            tuple.local_addr = read(head, network as usize + 24);
        }
        _ => return None,
    }
    // A NULL device or net reads as netns 0.
    let dev: *const u8 = read(skb, offset!(skb_dev));
    let netns = read_netns_of(read(dev, offset!(dev_nd_net)));
    Some((tuple, netns))
}

/// Key of the peer-TTL table: the remote address, IPv4 (also v4-mapped IPv6) in the first
/// four bytes, so both socket families of the same peer share one entry.
#[inline(always)]
fn peer_key(family: u16, addr: &[u8; 16]) -> [u8; 16] {
    let mapped = family == AF_INET6
        && addr[..10].iter().all(|&b| b == 0)
        && addr[10] == 0xff
        && addr[11] == 0xff;
    if mapped {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&addr[12..]);
        key
    } else {
        *addr
    }
}

const TCP_FLAG_RST: u8 = 0x04;

/// cgroup_skb ingress on the cgroup v2 root: for TCP segments on watched ports, remembers the
/// TTL / hop limit each peer's packets arrive with, and the TTL of each RST, so a RST forged
/// by a middlebox (a TTL that differs from the peer's own) can be told from the peer's own.
/// Never drops anything; unwatched traffic costs two packet loads and one array lookup.
/// A TCP segment as the cgroup_skb programs see it (the IP header at offset 0).
struct Segment {
    ttl: u8,
    source_port: u16,
    dest_port: u16,
    flags: u8,
    payload: u32,
    /// Offset of the TCP payload in the packet.
    payload_offset: usize,
    /// Offsets and length of the source and destination addresses in the packet.
    source_addr: usize,
    dest_addr: usize,
    v6: bool,
    /// Arriving (ingress), or leaving (egress).
    received: bool,
}

/// Reads a `T` at `offset` in the packet's linear data, bounds-checked the way the verifier
/// wants for direct packet access (far cheaper than a `bpf_skb_load_bytes` call per field).
/// `T` must be wider than one byte: LLVM rewrites a one-byte check into a form the verifier
/// does not credit.
#[inline(always)]
fn packet_at<T>(start: usize, end: usize, offset: usize) -> Option<T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: inside [data, data_end), checked above.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

/// The shortest TCP segment over IPv4 (headers without options); an IPv6 one is longer.
const MIN_TCP_V4: usize = 40;

/// The IP and TCP headers of the packet (linear at the cgroup hooks: the IP header at
/// `data`). Returns early, before touching anything else, for unwatched ports.
#[inline(always)]
fn parse_segment(ctx: &SkBuffContext, received: bool) -> Option<Segment> {
    // SAFETY: reading the context's data pointers; the verifier checks every access after.
    let (start, end) = unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    };
    // The fixed IPv4 header plus the TCP ports, in one checked read.
    let v4: [u8; MIN_TCP_V4] = packet_at(start, end, 0)?;
    let (l4, v6) = match v4[0] >> 4 {
        4 if v4[9] == IPPROTO_TCP as u8 => (usize::from(v4[0] & 0x0f) * 4, false),
        // Only a TCP header right after the fixed header (no extension headers).
        6 if v4[6] == IPPROTO_TCP as u8 => (40, true),
        _ => return None,
    };
    // Ports, sequence numbers, data offset and flags.
    let tcp: [u8; 14] = packet_at(start, end, l4)?;
    let source_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dest_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    if !is_watched(source_port) && !is_watched(dest_port) {
        return None;
    }
    let tcp_header = u32::from(tcp[12] >> 4) * 4;
    let (ttl, l3_payload, source_addr, dest_addr) = if v6 {
        // Payload length and hop limit.
        (v4[7], u32::from(u16::from_be_bytes([v4[4], v4[5]])), 8, 24)
    } else {
        let total = u32::from(u16::from_be_bytes([v4[2], v4[3]]));
        (v4[8], total.saturating_sub(l4 as u32), 12, 16)
    };
    Some(Segment {
        ttl,
        source_port,
        dest_port,
        flags: tcp[13],
        payload: l3_payload.saturating_sub(tcp_header),
        payload_offset: l4 + tcp_header as usize,
        source_addr,
        dest_addr,
        v6,
        received,
    })
}

#[inline(always)]
fn load_addr(ctx: &SkBuffContext, offset: usize, v6: bool) -> Option<[u8; 16]> {
    if v6 {
        return ctx.load(offset).ok();
    }
    let v4: [u8; 4] = ctx.load(offset).ok()?;
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&v4);
    Some(addr)
}

#[inline(always)]
fn skb_cookie(ctx: &SkBuffContext) -> u64 {
    if offset!(flow_key_is_address) != 0 {
        // The same key as the tracing programs' (see `cookie_of`): the socket's address.
        // SAFETY: reading the skb's socket pointer from the program's own context.
        return unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk } as u64;
    }
    // SAFETY: the program's own skb; the helper reads skb->sk.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) }
}

/// Starts idle tracking of a watched flow at its first data segment (a flow that never
/// carries data costs nothing here), with its tuple and netns; the entry is removed at
/// TCP_CLOSE. Not inlined: it keeps the programs' register pressure and stack down.
#[inline(never)]
fn start_activity(ctx: &SkBuffContext, cookie: u64, segment: &Segment) {
    // SAFETY: reading the skb's socket pointer from the program's own context.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    // SAFETY: the helper checks the socket type; NULL unless a full TCP socket (not a
    // request or time-wait socket, which could never be removed at TCP_CLOSE).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) };
    if tp.is_null() {
        return;
    }
    // Read from the caller's stack, not passed as an argument (see the note on `emit`).
    let received = segment.received;
    let (local, remote) = if received {
        (segment.dest_addr, segment.source_addr)
    } else {
        (segment.source_addr, segment.dest_addr)
    };
    let (local_port, remote_port) = if received {
        (segment.dest_port, segment.source_port)
    } else {
        (segment.source_port, segment.dest_port)
    };
    let Some(scratch) = ACTIVITY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own scratch entry; every field is written below.
    let activity = unsafe { &mut *scratch };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(local_addr) = load_addr(ctx, local, segment.v6) else {
        return;
    };
    activity.local_addr = local_addr;
    let Some(remote_addr) = load_addr(ctx, remote, segment.v6) else {
        return;
    };
    activity.remote_addr = remote_addr;
    activity.last_rx_ns = now;
    activity.last_tx_ns = now;
    activity.last_packet_ns = now;
    activity.gap_ns = 0;
    activity.resumed_ns = 0;
    activity.keepalive_ns = now;
    activity.tx_first_ns = 0;
    activity.rx_first_ns = 0;
    activity.keepalive = read_keepalive(tp as *const u8);
    activity.netns = read_sock_netns(tp as *const u8);
    activity.local_port = local_port;
    activity.remote_port = remote_port;
    activity.family = if segment.v6 { AF_INET6 } else { AF_INET } as u8;
    activity.tx_class = payload_class::NONE;
    activity.rx_class = payload_class::NONE;
    activity._pad = 0;
    // BPF_NOEXIST: the other direction's program may have created it a moment ago.
    if ACTIVITY.insert(&cookie, activity, BPF_NOEXIST).is_err()
        && unsafe { ACTIVITY.get(&cookie) }.is_none()
    {
        count(counter::ACTIVITY_TABLE_FULL);
    }
}

/// Records a segment in the flow's activity (data segments also as data); returns the
/// record for further updates, None when the flow is not tracked.
#[inline(always)]
fn note_segment(
    ctx: &SkBuffContext,
    cookie: u64,
    segment: &Segment,
) -> Option<&'static mut FlowActivity> {
    if cookie == 0 {
        return None;
    }
    let payload = segment.payload;
    let activity = match ACTIVITY.get_ptr_mut(&cookie) {
        Some(activity) => activity,
        None if payload > 0 => {
            start_activity(ctx, cookie, segment);
            ACTIVITY.get_ptr_mut(&cookie)?
        }
        None => return None,
    };
    // SAFETY: a live map value; concurrent writers only store timestamps.
    let activity = unsafe { &mut *activity };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    activity.last_packet_ns = now;
    if payload == 0 {
        return Some(activity);
    }
    let last = activity.last_rx_ns.max(activity.last_tx_ns);
    // SAFETY: reading our own read-only global.
    let mark = unsafe { core::ptr::read_volatile(&raw const IDLE_MARK_NS) };
    if mark != 0 && now > last && now - last >= mark {
        activity.gap_ns = now - last;
        activity.resumed_ns = now;
    }
    if segment.received {
        activity.last_rx_ns = now;
    } else {
        activity.last_tx_ns = now;
    }
    Some(activity)
}

/// Classifies the first bytes of a segment's payload (see `tracer_ebpf::payload_class`);
/// the bytes stay in this function's stack.
#[inline(always)]
fn classify_payload(ctx: &SkBuffContext, segment: &Segment) -> u8 {
    let mut head = [0u8; payload_class::HEAD];
    let at = segment.payload_offset;
    let len = if segment.payload >= 16 {
        match ctx.load::<[u8; 16]>(at) {
            Ok(bytes) => {
                head = bytes;
                16
            }
            Err(_) => 0,
        }
    } else if segment.payload >= 8 {
        match ctx.load::<[u8; 8]>(at) {
            Ok(bytes) => {
                head[..8].copy_from_slice(&bytes);
                8
            }
            Err(_) => 0,
        }
    } else if segment.payload >= 4 {
        // A TLS alert is 7 bytes: the record header is enough to tell.
        match ctx.load::<[u8; 4]>(at) {
            Ok(bytes) => {
                head[..4].copy_from_slice(&bytes);
                4
            }
            Err(_) => 0,
        }
    } else {
        match ctx.load::<[u8; 1]>(at) {
            Ok(bytes) => {
                head[0] = bytes[0];
                1
            }
            Err(_) => 0,
        }
    };
    match payload_class::classify(&head, len) {
        payload_class::NONE => payload_class::OTHER,
        class => class,
    }
}

/// After the class of a flow's first data segment in one direction was recorded: a flow
/// already reported gets it as an event; a quiet flow stays quiet unless its answer may be a
/// TLS mismatch, and then sends what it recorded (its first payloads included).
#[inline(always)]
fn report_first_payload(activity: &FlowActivity, cookie: u64, received: bool) {
    let tuple = Tuple {
        family: u16::from(activity.family),
        local_port: activity.local_port,
        remote_port: activity.remote_port,
        local_addr: activity.local_addr,
        remote_addr: activity.remote_addr,
    };
    if is_quiet(cookie) {
        if received && payload_class::answer_may_mismatch(activity.tx_class, activity.rx_class) {
            ship_quiet(cookie, &tuple);
        }
        return;
    }
    let record = Record {
        kind: kind::FIRST_PAYLOAD,
        cookie,
        netns: activity.netns,
        old_state: tcp_state::ESTABLISHED,
        new_state: tcp_state::ESTABLISHED,
        detail: i32::from(if received {
            activity.rx_class
        } else {
            activity.tx_class
        }),
        flags: if received { flag::RECEIVED } else { 0 },
        ..Default::default()
    };
    emit(&record, &tuple, flow_owner(cookie));
}

/// cgroup_skb ingress on the cgroup v2 root, watched ports only: remembers the TTL / hop
/// limit each peer's packets arrive with and the TTL of each RST, so a RST forged by a
/// middlebox (a TTL that differs from the peer's own) can be told from the peer's own; and
/// records data segments for idle tracking. Never drops anything; unwatched traffic costs a
/// few packet loads and one array lookup.
#[cgroup_skb(ingress)]
pub fn ingress_ttl(ctx: SkBuffContext) -> i32 {
    let _ = observe_ingress(&ctx);
    1
}

#[inline(always)]
fn observe_ingress(ctx: &SkBuffContext) -> Option<()> {
    let segment = parse_segment(ctx, true)?;
    if segment.flags & TCP_FLAG_RST != 0 {
        let cookie = skb_cookie(ctx);
        if cookie != 0 {
            let _ = RST_TTL.insert(&cookie, &segment.ttl, 0);
        }
        return Some(());
    }
    let remote = load_addr(ctx, segment.source_addr, segment.v6)?;
    // Write only on change: the common case is a lookup and nothing else.
    // SAFETY: the value is copied out at once.
    let known = unsafe { PEER_TTL.get(&remote) }.copied();
    if known != Some(segment.ttl) {
        let _ = PEER_TTL.insert(&remote, &segment.ttl, 0);
    }
    let cookie = skb_cookie(ctx);
    let activity = note_segment(ctx, cookie, &segment)?;
    if segment.payload > 0 && activity.rx_class == payload_class::NONE {
        activity.rx_class = classify_payload(ctx, &segment);
        activity.rx_first_ns = activity.last_packet_ns;
        report_first_payload(activity, cookie, true);
    }
    Some(())
}

/// cgroup_skb egress on the cgroup v2 root, watched ports only: records segments sent for
/// idle tracking and, at most once a second per flow, refreshes the socket's keepalive
/// settings (an application may set SO_KEEPALIVE after connect()). Never drops anything.
#[cgroup_skb(egress)]
pub fn egress_activity(ctx: SkBuffContext) -> i32 {
    let _ = observe_egress(&ctx);
    1
}

#[inline(always)]
fn observe_egress(ctx: &SkBuffContext) -> Option<()> {
    let segment = parse_segment(ctx, false)?;
    let cookie = skb_cookie(ctx);
    let activity = note_segment(ctx, cookie, &segment)?;
    if segment.payload > 0 && activity.tx_class == payload_class::NONE {
        activity.tx_class = classify_payload(ctx, &segment);
        activity.tx_first_ns = activity.last_packet_ns;
        report_first_payload(activity, cookie, false);
    }
    // Keepalive probes are segments too: a socket that turned keepalive on gets re-read.
    if activity
        .last_packet_ns
        .saturating_sub(activity.keepalive_ns)
        >= 1_000_000_000
    {
        activity.keepalive_ns = activity.last_packet_ns;
        // SAFETY: reading the skb's socket pointer from the program's own context.
        let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
        if !sk.is_null() {
            // SAFETY: the helper checks the socket type and returns NULL for non-TCP.
            let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) };
            if !tp.is_null() {
                activity.keepalive = read_keepalive(tp as *const u8);
            }
        }
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
