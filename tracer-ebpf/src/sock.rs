//! Reading sockets: the tuple, netns, protocol, errors and keepalive settings of a `struct
//! sock` through offsets from the running kernel's BTF (no CO-RE in Rust eBPF), and the flow key.
//! Fields of the struct a pointer is typed as are loaded directly (`field`); the rest go
//! through the helper, whose result is never branched on (see `read`).

use aya_ebpf::helpers::{bpf_get_socket_cookie, generated};
use core::ffi::c_void;
use core::mem::MaybeUninit;
use tracer_ebpf::{AF_INET, AF_INET6, Keepalive, counter};

use crate::maps::{IPPROTO_TCP, KEY_SCRATCH, count, is_watched, offset};

/// Reads a `T` at `base + off` in kernel memory through the helper: for memory no BTF type
/// vouches for (packet bytes, a field of a struct that extends the one the pointer is typed
/// as); zero when it cannot be read (the helper zeroes its destination on a fault). No
/// branch on the helper's result: each branch per read doubles the paths a verifier walks
/// where it cannot prune them (Linux 6.1 walks over 200,000 instructions for what 6.18 does
/// in 20,000).
#[inline(always)]
pub(crate) fn read<T>(base: *const u8, off: usize) -> T {
    let mut value = MaybeUninit::<T>::uninit();
    // SAFETY: the helper faults safely on a bad address and writes all of `value` either
    // way (zeroes on a fault); T is plain data for which zero is a valid value.
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            base.wrapping_add(off).cast(),
        );
        value.assume_init()
    }
}

/// Loads a `T` at `base + off` straight from kernel memory, without a helper call. Only for
/// a BTF-typed pointer the verifier knows (a tracepoint's `struct sock *` or `struct sk_buff
/// *`, a struct pointer loaded through one, a `bpf_skc_to_tcp_sock` result) and a field
/// inside the struct it is typed as, read whole: the verifier checks each such load against
/// the kernel's BTF when the program loads (a field outside the type, or a load spanning two
/// fields, is refused there, never wrong at run time), and the JIT makes it a load whose
/// fault reads as zero (BPF_PROBE_MEM): a NULL base reads as zeroes, as with `read`. The
/// offset must be a verifier-known constant (`offset!`, from the frozen read-only global).
/// A helper call cost ~8-30 ns per read here; a socket's tuple, netns, protocol and error
/// take eight of them per state change.
#[inline(always)]
pub(crate) fn field<T: Copy>(base: *const u8, off: usize) -> T {
    // SAFETY: see above: the verifier checks the access, and a faulting load reads as zero.
    unsafe { core::ptr::read_volatile(base.wrapping_add(off).cast::<T>()) }
}

/// An IPv4 address in the 16-byte form events carry (the rest zero), built as words: a
/// byte-wise fill of the other 12 bytes compiles to a call to a byte loop (`memset`) on the
/// BPF target, which runs and is verified byte by byte.
#[inline(always)]
pub(crate) fn v4_addr(bytes: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(bytes), 0, 0, 0];
    // SAFETY: both are 16 plain bytes.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// The connection tuple of a socket (struct sock, request_sock or inet_timewait_sock: they all
/// start with struct sock_common). Addresses first and 8-byte aligned: zeroing and copying
/// them then compiles to word stores instead of calls to a byte loop.
#[repr(C, align(8))]
pub(crate) struct Tuple {
    pub(crate) local_addr: [u8; 16],
    pub(crate) remote_addr: [u8; 16],
    pub(crate) family: u16,
    pub(crate) local_port: u16,
    pub(crate) remote_port: u16,
}

/// A socket's family and ports: the cheap part, enough to decide whether the flow is
/// watched.
#[derive(Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) family: u16,
    pub(crate) local_port: u16,
    pub(crate) remote_port: u16,
}

/// Ports and family; the ports are checked first: for unwatched traffic (most of it) that
/// load and two array lookups are all it costs.
#[inline(always)]
pub(crate) fn read_ports(sk: *const u8) -> Option<Ports> {
    // skc_dport (network order) then skc_num (host order), as the u32 skc_portpair.
    let pair: u32 = field(sk, offset!(skc_portpair));
    let remote_port = u16::from_be(pair as u16);
    let mut local_port = (pair >> 16) as u16;
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
    let family: u16 = field(sk, offset!(skc_family));
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(Ports {
        family,
        local_port,
        remote_port,
    })
}

/// The whole tuple: the ports and the addresses, written once (no zeroing first). None for
/// a NULL socket, the one failure a direct load lets us see (it reads as zeroes).
#[inline(always)]
pub(crate) fn read_addrs(sk: *const u8, ports: &Ports) -> Option<Tuple> {
    if sk.is_null() {
        return None;
    }
    let (local_addr, remote_addr) = if ports.family == AF_INET {
        let pair: [u8; 8] = field::<u64>(sk, offset!(skc_addrpair)).to_ne_bytes();
        (
            v4_addr([pair[4], pair[5], pair[6], pair[7]]),
            v4_addr([pair[0], pair[1], pair[2], pair[3]]),
        )
    } else {
        (
            v6_addr(sk, offset!(skc_v6_rcv_saddr)),
            v6_addr(sk, offset!(skc_v6_daddr)),
        )
    };
    Some(Tuple {
        local_addr,
        remote_addr,
        family: ports.family,
        local_port: ports.local_port,
        remote_port: ports.remote_port,
    })
}

/// A socket's `struct in6_addr` at `off`, loaded as two words (each inside its byte array).
#[inline(always)]
fn v6_addr(sk: *const u8, off: usize) -> [u8; 16] {
    words_addr([field(sk, off), field(sk, off + 8)])
}

/// A 16-byte address read as two words (aligned: copied as words, see `v4_addr`).
#[inline(always)]
pub(crate) fn words_addr(words: [u64; 2]) -> [u8; 16] {
    // SAFETY: both are 16 plain bytes.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
}

#[inline(always)]
pub(crate) fn read_netns_of(net: *const u8) -> u32 {
    // A NULL `net` reads as 0 (the load faults).
    field(net, offset!(net_ns_inum))
}

#[inline(always)]
pub(crate) fn read_sock_netns(sk: *const u8) -> u32 {
    read_netns_of(field(sk, offset!(skc_net)))
}

#[inline(always)]
pub(crate) fn is_tcp_sock(sk: *const u8) -> bool {
    let protocol = if offset!(sk_protocol_size) == 1 {
        u16::from(field::<u8>(sk, offset!(sk_protocol)))
    } else {
        field::<u16>(sk, offset!(sk_protocol))
    };
    protocol == IPPROTO_TCP
}

#[inline(always)]
pub(crate) fn cookie_of(sk: *const u8) -> u64 {
    if offset!(flow_key_is_address) != 0 {
        // Linux before 5.12: tracing programs cannot ask for the cookie (the branch is pruned
        // there, so the helper call is never seen by that verifier). The socket's address
        // keys the flow while it lives; its slot goes at TCP_CLOSE, before it can be reused.
        return address_key(sk as u64);
    }
    // SAFETY: `sk` is the tracepoint's BTF-typed socket pointer; the helper accepts NULL.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// A socket's address as a plain number, the flow key before Linux 5.12. The verifier types
/// a value read from a socket pointer as that pointer and refuses arithmetic on it (the
/// hint and mark tables index by the key's low bits); stored to a map and read back it is a
/// number (the programs load with the privileges that allow that).
#[inline(always)]
pub(crate) fn address_key(address: u64) -> u64 {
    let Some(scratch) = KEY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's own scratch value, written and read back at once.
    unsafe {
        core::ptr::write_volatile(scratch, address);
        core::ptr::read_volatile(scratch)
    }
}

/// Reads the tuple of a socket and checks the watched-port set; None for unwatched flows.
#[inline(always)]
pub(crate) fn watched_tuple(sk: *const u8) -> Option<Tuple> {
    let ports = read_ports(sk)?;
    let tuple = read_addrs(sk, &ports);
    if tuple.is_none() {
        count(counter::READ_FAILED);
    }
    tuple
}

/// The socket's keepalive settings and its netns defaults (see `tracer_ebpf::Keepalive`);
/// `tp` is a `struct tcp_sock` pointer (`bpf_skc_to_tcp_sock`'s).
#[inline(always)]
pub(crate) fn read_keepalive(tp: *const u8) -> Keepalive {
    let flags: u64 = field(tp, offset!(sk_flags));
    // A NULL `net` reads as zeroes.
    let net: *const u8 = field(tp, offset!(skc_net));
    Keepalive {
        time: field(tp, offset!(tp_keepalive_time)),
        intvl: field(tp, offset!(tp_keepalive_intvl)),
        netns_time: field(net, offset!(net_keepalive_time)),
        netns_intvl: field(net, offset!(net_keepalive_intvl)),
        probes: field(tp, offset!(tp_keepalive_probes)),
        netns_probes: field(net, offset!(net_keepalive_probes)),
        enabled: ((flags >> (offset!(sock_keepopen_bit) & 63)) & 1) as u8,
        _pad: 0,
    }
}

/// The socket's pending error: `sk_err`, or else `sk_err_soft` (true): ICMP errors during
/// connect are soft on current kernels (the SYN is retried), and a non-blocking connect()er
/// may already have read and cleared `sk_err` (getsockopt SO_ERROR) when the report fires.
#[inline(always)]
pub(crate) fn socket_error(sk: *const u8) -> (i32, bool) {
    let err: i32 = field(sk, offset!(sk_err));
    if err != 0 {
        return (err, false);
    }
    let soft: i32 = field(sk, offset!(sk_err_soft));
    if soft != 0 {
        return (soft, true);
    }
    (queued_error(sk), true)
}

/// The errno of the first extended error queued on the socket (0 if none): an ICMP error
/// is queued and reported before the socket's own error fields are set.
#[inline(always)]
pub(crate) fn queued_error(sk: *const u8) -> i32 {
    let ee_errno = offset!(skb_ee_errno);
    if ee_errno == 0 {
        return 0;
    }
    let head = sk.wrapping_add(offset!(sk_error_queue));
    let skb: *const u8 = field(sk, offset!(sk_error_queue));
    // An empty queue points at itself.
    if skb == head {
        return 0;
    }
    // A NULL `skb` reads as 0 (inside its `cb` array).
    field::<u32>(skb, ee_errno) as i32
}
