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

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tracer_ebpf::{
    AF_INET, AF_INET6, FlowEvent, KernelOffsets, ListenerKey, SockOwner, counter, flag, kind,
    tcp_state,
};

const IPPROTO_TCP: u16 = 6;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Field offsets from the running kernel's BTF; written by userspace before load (rodata, so
/// the verifier sees constants and prunes branches for features this kernel lacks).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Unread bytes in the ring buffer at which a submit wakes the reader. Below it records are
/// submitted without a wakeup (a wakeup per event costs ~9 µs) and userspace polls on a timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// The watched-port set: index = port, non-zero = watched. An array lookup is the cheapest
/// check for unwatched traffic and holds any mix of single ports and ranges.
#[map]
static WATCHED_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Socket cookie -> owning process. Inserted at connect()/accept, removed at TCP_CLOSE.
/// Bounded; a full table is counted (OWNER_TABLE_FULL). Userspace may resize it at load.
#[map]
static OWNERS: HashMap<u64, SockOwner> = HashMap::with_max_entries(131072, 0);

/// (netns, port) of a watched listener -> the process that called listen(): attribution for
/// sockets it accepts, which are created in softirq context.
#[map]
static LISTENERS: HashMap<ListenerKey, SockOwner> = HashMap::with_max_entries(8192, 0);

/// Per-CPU loss and overflow counters, indexed by `tracer_ebpf::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading our own read-only global.
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) } as usize
    };
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn read<T>(base: *const u8, off: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const T) }.ok()
}

/// Adds one to a per-CPU counter; returns true the first time it moves on this CPU.
#[inline(always)]
fn count(index: u32) -> bool {
    match COUNTERS.get_ptr_mut(index) {
        Some(slot) => unsafe {
            *slot += 1;
            *slot == 1
        },
        None => false,
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

/// Family and ports: the cheap part, enough to decide whether the flow is watched.
#[inline(always)]
fn read_ports(sk: *const u8) -> Option<Tuple> {
    let family: u16 = read(sk, offset!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    // skc_dport (network order) then skc_num (host order), read as one little-endian u32.
    let portpair: u32 = read(sk, offset!(skc_portpair))?;
    Some(Tuple {
        family,
        local_port: (portpair >> 16) as u16,
        remote_port: u16::from_be(portpair as u16),
        local_addr: [0; 16],
        remote_addr: [0; 16],
    })
}

#[inline(always)]
fn read_addrs(sk: *const u8, tuple: &mut Tuple) -> Option<()> {
    if tuple.family == AF_INET {
        let pair: [u8; 8] = read(sk, offset!(skc_addrpair))?;
        tuple.remote_addr[..4].copy_from_slice(&pair[..4]);
        tuple.local_addr[..4].copy_from_slice(&pair[4..]);
    } else {
        tuple.remote_addr = read(sk, offset!(skc_v6_daddr))?;
        tuple.local_addr = read(sk, offset!(skc_v6_rcv_saddr))?;
    }
    Some(())
}

#[inline(always)]
fn read_netns_of(net: *const u8) -> u32 {
    if net.is_null() {
        return 0;
    }
    read(net, offset!(net_ns_inum)).unwrap_or(0)
}

#[inline(always)]
fn read_sock_netns(sk: *const u8) -> u32 {
    let net: *const u8 = read(sk, offset!(skc_net)).unwrap_or(core::ptr::null());
    read_netns_of(net)
}

#[inline(always)]
fn is_tcp_sock(sk: *const u8) -> bool {
    let protocol = if offset!(sk_protocol_size) == 1 {
        read::<u8>(sk, offset!(sk_protocol)).map(u16::from)
    } else {
        read::<u16>(sk, offset!(sk_protocol))
    };
    protocol == Some(IPPROTO_TCP)
}

#[inline(always)]
fn ready() -> bool {
    offset!(ready) != 0
}

#[inline(always)]
fn cookie_of(sk: *const u8) -> u64 {
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer; the helper accepts NULL.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// The current task as a socket owner; only meaningful in process context (connect, listen).
#[inline(always)]
fn current_owner(flags: u16) -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    SockOwner {
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: bpf_get_current_uid_gid() as u32,
        flags: flags | flag::OWNER_KNOWN,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

struct Record {
    kind: u8,
    cookie: u64,
    netns: u32,
    old_state: u8,
    new_state: u8,
    detail: i32,
    flags: u16,
}

#[inline(always)]
fn emit(ctx: &BtfTracePointContext, record: Record, tuple: &Tuple, owner: Option<&SockOwner>) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        if count(counter::RINGBUF_FULL) {
            warn!(ctx, "ring buffer full: events are being lost (counted)");
        }
        return;
    };
    let (cgroup_id, pid, tid, uid, owner_flags, comm) = match owner {
        Some(o) => (o.cgroup_id, o.pid, o.tid, o.uid, o.flags, o.comm),
        None => (0, 0, 0, 0, 0, [0; 16]),
    };
    entry.write(FlowEvent {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cookie: record.cookie,
        cgroup_id,
        netns: record.netns,
        pid,
        tid,
        uid,
        detail: record.detail,
        kind: record.kind,
        family: tuple.family as u8,
        old_state: record.old_state,
        new_state: record.new_state,
        local_port: tuple.local_port,
        remote_port: tuple.remote_port,
        flags: record.flags | owner_flags,
        _pad: 0,
        local_addr: tuple.local_addr,
        remote_addr: tuple.remote_addr,
        comm,
    });
    // SAFETY: reading our own read-only global.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    let wake = if wakeup_bytes != 0 && EVENTS.query(BPF_RB_AVAIL_DATA) >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake);
}

/// Reads the tuple of a socket and checks the watched-port set; None for unwatched flows.
#[inline(always)]
fn watched_tuple(sk: *const u8) -> Option<Tuple> {
    let mut tuple = read_ports(sk)?;
    if !is_watched(tuple.local_port) && !is_watched(tuple.remote_port) {
        return None;
    }
    if read_addrs(sk, &mut tuple).is_none() {
        count(counter::READ_FAILED);
        return None;
    }
    Some(tuple)
}

fn owner_of(cookie: u64) -> Option<SockOwner> {
    // SAFETY: the value is copied out at once.
    unsafe { OWNERS.get(&cookie) }.copied()
}

fn listener_owner(netns: u32, port: u16) -> Option<SockOwner> {
    let key = ListenerKey {
        netns,
        port,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    unsafe { LISTENERS.get(&key) }.copied()
}

fn remember_owner(ctx: &BtfTracePointContext, cookie: u64, owner: &SockOwner) {
    if OWNERS.insert(&cookie, owner, 0).is_err() && count(counter::OWNER_TABLE_FULL) {
        warn!(
            ctx,
            "socket owner table full: attribution lost (raise --max-flows)"
        );
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    if ready() && is_tcp_sock(sk) {
        on_state_change(&ctx, sk, old_state as u8, new_state as u8);
    }
    0
}

#[inline(always)]
fn on_state_change(ctx: &BtfTracePointContext, sk: *const u8, old_state: u8, new_state: u8) {
    let Some(mut tuple) = read_ports(sk) else {
        return;
    };
    if tuple.local_port == 0 {
        // The kernel clears skc_num before it reports CLOSE; inet_sport still holds the port.
        tuple.local_port = read::<u16>(sk, offset!(inet_sport)).map_or(0, u16::from_be);
    }
    if !is_watched(tuple.local_port) && !is_watched(tuple.remote_port) {
        return;
    }
    if read_addrs(sk, &mut tuple).is_none() {
        count(counter::READ_FAILED);
        return;
    }
    let netns = read_sock_netns(sk);
    let cookie = cookie_of(sk);
    let mut flags = 0;
    let owner = if old_state == tcp_state::CLOSE && new_state == tcp_state::SYN_SENT {
        // connect(): process context, the caller owns the socket.
        let owner = current_owner(0);
        remember_owner(ctx, cookie, &owner);
        Some(owner)
    } else if old_state == tcp_state::CLOSE && new_state == tcp_state::LISTEN {
        // listen(): remember the server process for the sockets it will accept.
        let owner = current_owner(0);
        let key = ListenerKey {
            netns,
            port: tuple.local_port,
            _pad: 0,
        };
        if LISTENERS.insert(&key, &owner, 0).is_err() && count(counter::LISTENER_TABLE_FULL) {
            warn!(
                ctx,
                "listener table full: accepted sockets lose attribution"
            );
        }
        Some(owner)
    } else if new_state == tcp_state::SYN_RECV {
        // A child socket cloned from a listener (softirq; reported as LISTEN -> SYN_RECV on
        // current kernels, CLOSE -> SYN_RECV on older ones): inherit the listener's owner.
        flags = flag::ACCEPTED;
        let owner = listener_owner(netns, tuple.local_port).map(|mut owner| {
            owner.flags |= flag::ACCEPTED;
            owner
        });
        if let Some(owner) = &owner {
            remember_owner(ctx, cookie, owner);
        }
        owner
    } else {
        owner_of(cookie)
    };
    let record = Record {
        kind: kind::STATE_CHANGE,
        cookie,
        netns,
        old_state,
        new_state,
        detail: 0,
        flags,
    };
    emit(ctx, record, &tuple, owner.as_ref());
    if new_state == tcp_state::CLOSE {
        if old_state == tcp_state::LISTEN {
            let key = ListenerKey {
                netns,
                port: tuple.local_port,
                _pad: 0,
            };
            let _ = LISTENERS.remove(&key);
        }
        let _ = OWNERS.remove(&cookie);
    }
}

/// Emits a non-state-change event for a full or minimal socket.
#[inline(always)]
fn emit_for_sock(ctx: &BtfTracePointContext, sk: *const u8, event_kind: u8, detail: i32) {
    let Some(tuple) = watched_tuple(sk) else {
        return;
    };
    let state: u8 = read(sk, offset!(skc_state)).unwrap_or(0);
    let cookie = cookie_of(sk);
    let record = Record {
        kind: event_kind,
        cookie,
        netns: read_sock_netns(sk),
        old_state: state,
        new_state: state,
        detail,
        flags: 0,
    };
    emit(ctx, record, &tuple, owner_of(cookie).as_ref());
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
        emit_for_sock(&ctx, sk, kind::RETRANSMIT, -err);
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    if ready() {
        let sk: *const u8 = ctx.arg(0);
        emit_for_sock(&ctx, sk, kind::RESET_RECEIVED, 0);
    }
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if ready() && is_tcp_sock(sk) {
        let err: i32 = read(sk, offset!(sk_err)).unwrap_or(0);
        emit_for_sock(&ctx, sk, kind::SOCKET_ERROR, err);
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
    let owner = listener_owner(netns, tuple.local_port);
    let record = Record {
        kind: kind::SYNACK_RETRANSMIT,
        cookie: cookie_of(req),
        netns,
        old_state: tcp_state::NEW_SYN_RECV,
        new_state: tcp_state::NEW_SYN_RECV,
        detail: 0,
        flags: flag::ACCEPTED,
    };
    emit(&ctx, record, &tuple, owner.as_ref());
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
        emit_for_sock(&ctx, sk, kind::RESET_SENT, reason);
        return 0;
    }
    // No socket (a segment to a port nobody listens on): the tuple comes from the packet that
    // provoked the RST, reversed, since the RST goes back to its sender.
    let skb: *const u8 = ctx.arg(1);
    if let Some((tuple, netns)) = packet_tuple(skb) {
        let record = Record {
            kind: kind::RESET_SENT,
            cookie: 0,
            netns,
            old_state: tcp_state::CLOSE,
            new_state: tcp_state::CLOSE,
            detail: reason,
            flags: flag::NO_SOCKET,
        };
        emit(&ctx, record, &tuple, None);
    }
    0
}

/// Tuple (this host first) and netns of a received TCP segment.
#[inline(always)]
fn packet_tuple(skb: *const u8) -> Option<(Tuple, u32)> {
    if skb.is_null() {
        return None;
    }
    let head: *const u8 = read(skb, offset!(skb_head))?;
    let network: u16 = read(skb, offset!(skb_network_header))?;
    let transport: u16 = read(skb, offset!(skb_transport_header))?;
    let ports: [u8; 4] = read(head, transport as usize)?;
    let sender_port = u16::from_be_bytes([ports[0], ports[1]]);
    let receiver_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !is_watched(sender_port) && !is_watched(receiver_port) {
        return None;
    }
    let version: u8 = read(head, network as usize)?;
    let mut tuple = Tuple {
        family: AF_INET,
        local_port: receiver_port,
        remote_port: sender_port,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    match version >> 4 {
        4 => {
            let addrs: [u8; 8] = read(head, network as usize + 12)?;
            tuple.remote_addr[..4].copy_from_slice(&addrs[..4]);
            tuple.local_addr[..4].copy_from_slice(&addrs[4..]);
        }
        6 => {
            tuple.family = AF_INET6;
            tuple.remote_addr = read(head, network as usize + 8)?;
            tuple.local_addr = read(head, network as usize + 24)?;
        }
        _ => return None,
    }
    let dev: *const u8 = read(skb, offset!(skb_dev)).unwrap_or(core::ptr::null());
    let netns = if dev.is_null() {
        0
    } else {
        let net: *const u8 = read(dev, offset!(dev_nd_net)).unwrap_or(core::ptr::null());
        read_netns_of(net)
    };
    Some((tuple, netns))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
