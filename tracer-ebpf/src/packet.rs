//! Packets: TCP segments as the cgroup_skb programs see them (direct packet access), received
//! segments as the tracepoints hand them (an skb read through BTF offsets), and the payload
//! classifier's input. No payload byte leaves this module: only its class.

use aya_ebpf::helpers::bpf_get_socket_cookie;
use aya_ebpf::programs::SkBuffContext;
use core::ffi::c_void;
use tracer_ebpf::{AF_INET, AF_INET6, payload_class};

use crate::maps::{IPPROTO_TCP, is_watched, offset};
use crate::sock::{Tuple, address_key, field, read, read_netns_of, v4_addr, words_addr};

pub(crate) const TCP_FLAG_RST: u8 = 0x04;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
pub(crate) const TCP_FLAG_ACK: u8 = 0x10;

/// The shortest TCP segment over IPv4 (headers without options); an IPv6 one is longer.
pub(crate) const MIN_TCP_V4: usize = 40;

/// cgroup_skb ingress on the cgroup v2 root: for TCP segments on watched ports, remembers the
/// TTL / hop limit each peer's packets arrive with, and the TTL of each RST, so a RST forged
/// by a middlebox (a TTL that differs from the peer's own) can be told from the peer's own.
/// Never drops anything; unwatched traffic costs two packet loads and one array lookup.
/// A TCP segment as the cgroup_skb programs see it (the IP header at offset 0).
pub(crate) struct Segment {
    pub(crate) ttl: u8,
    pub(crate) source_port: u16,
    pub(crate) dest_port: u16,
    pub(crate) flags: u8,
    pub(crate) payload: u32,
    /// Offset of the TCP payload in the packet.
    pub(crate) payload_offset: usize,
    /// Offsets and length of the source and destination addresses in the packet.
    pub(crate) source_addr: usize,
    pub(crate) dest_addr: usize,
    pub(crate) v6: bool,
    /// Arriving (ingress), or leaving (egress).
    pub(crate) received: bool,
}

/// Reads a `T` at `offset` in the packet's linear data, bounds-checked the way the verifier
/// wants for direct packet access (far cheaper than a `bpf_skb_load_bytes` call per field).
/// `T` must be wider than one byte: LLVM rewrites a one-byte check into a form the verifier
/// does not credit.
#[inline(always)]
pub(crate) fn packet_at<T>(start: usize, end: usize, offset: usize) -> Option<T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: inside [data, data_end), checked above.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

/// The IP and TCP headers of the packet (linear at the cgroup hooks: the IP header at
/// `data`). Returns early, before touching anything else, for unwatched ports.
#[inline(always)]
pub(crate) fn parse_segment(ctx: &SkBuffContext, received: bool) -> Option<Segment> {
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
pub(crate) fn load_addr(ctx: &SkBuffContext, offset: usize, v6: bool) -> Option<[u8; 16]> {
    if v6 {
        return ctx.load(offset).ok();
    }
    Some(v4_addr(ctx.load(offset).ok()?))
}

#[inline(always)]
pub(crate) fn skb_cookie(ctx: &SkBuffContext) -> u64 {
    if offset!(flow_key_is_address) != 0 {
        // The same key as the tracing programs' (see `cookie_of`): the socket's address.
        // SAFETY: reading the skb's socket pointer from the program's own context.
        return address_key(unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk } as u64);
    }
    // SAFETY: the program's own skb; the helper reads skb->sk.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut c_void) }
}

/// Key of the peer-TTL table: the remote address, IPv4 (also v4-mapped IPv6) in the first
/// four bytes, so both socket families of the same peer share one entry.
#[inline(always)]
pub(crate) fn peer_key(family: u16, addr: &[u8; 16]) -> [u8; 16] {
    let mapped = family == AF_INET6
        && addr[..10].iter().all(|&b| b == 0)
        && addr[10] == 0xff
        && addr[11] == 0xff;
    if mapped {
        v4_addr([addr[12], addr[13], addr[14], addr[15]])
    } else {
        *addr
    }
}

/// Tuple (this host first), netns, TCP flags and sequence number of a received segment; None
/// when it is not TCP or neither port is watched. Unreadable fields read as zeroes, which match no watched
/// port, no IP version and no protocol.
#[inline(always)]
pub(crate) fn received_segment(skb: *const u8) -> Option<(Tuple, u32, u8, u32)> {
    if skb.is_null() {
        return None;
    }
    // The sk_buff's own fields are loaded directly; the headers they point at (packet
    // memory, typed as plain bytes) go through the helper.
    let head: *const u8 = field(skb, offset!(skb_head));
    let network: u16 = field(skb, offset!(skb_network_header));
    let transport: u16 = field(skb, offset!(skb_transport_header));
    // Ports and sequence number, then data offset and flags: one read (bytes little-endian in
    // each word; a TCP header has at least 20).
    let tcp: [u64; 2] = read(head, transport as usize);
    let sender_port = u16::from_be(tcp[0] as u16);
    let receiver_port = u16::from_be((tcp[0] >> 16) as u16);
    if !is_watched(sender_port) && !is_watched(receiver_port) {
        return None;
    }
    // The fixed IP header, 40 bytes: all of IPv6's, IPv4's and the start of the TCP header
    // after it (a TCP segment over IPv4 has at least 40 bytes). One read.
    let ip: [u64; 5] = read(head, network as usize);
    // IPv4's protocol, or IPv6's next header (a TCP header right after the fixed header).
    let (family, local_addr, remote_addr, protocol) = match (ip[0] as u8) >> 4 {
        4 => (
            AF_INET,
            v4_addr((ip[2] as u32).to_ne_bytes()),
            v4_addr(((ip[1] >> 32) as u32).to_ne_bytes()),
            (ip[1] >> 8) as u8,
        ),
        6 => (
            AF_INET6,
            words_addr([ip[3], ip[4]]),
            words_addr([ip[1], ip[2]]),
            (ip[0] >> 48) as u8,
        ),
        _ => return None,
    };
    let tuple = Tuple {
        local_addr,
        remote_addr,
        family,
        local_port: receiver_port,
        remote_port: sender_port,
    };
    if u16::from(protocol) != IPPROTO_TCP {
        return None;
    }
    let tcp_flags = (tcp[1] >> 40) as u8;
    let seq = u32::from_be((tcp[0] >> 32) as u32);
    // A NULL device or net reads as netns 0.
    let dev: *const u8 = field(skb, offset!(skb_dev));
    let netns = read_netns_of(field(dev, offset!(dev_nd_net)));
    Some((tuple, netns, tcp_flags, seq))
}

/// Classifies the first bytes of a segment's payload (see `tracer_ebpf::payload_class`);
/// the bytes stay in this function's stack.
#[inline(always)]
pub(crate) fn classify_payload(ctx: &SkBuffContext, segment: &Segment) -> u8 {
    let at = segment.payload_offset;
    // Built as words, whatever was read and the rest zero (see `v4_addr`).
    let (words, len): ([u64; 2], usize) = if segment.payload >= 16 {
        match ctx.load::<[u64; 2]>(at) {
            Ok(words) => (words, 16),
            Err(_) => ([0, 0], 0),
        }
    } else if segment.payload >= 8 {
        match ctx.load::<u64>(at) {
            Ok(word) => ([word, 0], 8),
            Err(_) => ([0, 0], 0),
        }
    } else if segment.payload >= 4 {
        // A TLS alert is 7 bytes: the record header is enough to tell.
        match ctx.load::<u32>(at) {
            Ok(word) => ([u64::from(word), 0], 4),
            Err(_) => ([0, 0], 0),
        }
    } else {
        match ctx.load::<u8>(at) {
            Ok(byte) => ([u64::from(byte), 0], 1),
            Err(_) => ([0, 0], 0),
        }
    };
    let head = words_addr(words);
    match payload_class::classify(&head, len) {
        payload_class::NONE => payload_class::OTHER,
        class => class,
    }
}
