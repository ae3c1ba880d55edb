//! cgroup_skb on the cgroup v2 root, both directions: peer and RST TTLs (who sent a RST),
//! data segments for idle tracking, and the class of each direction's first payload. Never drops
//! anything.

use aya_ebpf::helpers::bpf_skc_to_tcp_sock;
use aya_ebpf::macros::cgroup_skb;
use aya_ebpf::programs::SkBuffContext;
use core::ffi::c_void;
use tracer_ebpf::payload_class;

use crate::activity::{note_segment, report_first_payload};
use crate::maps::{PEER_TTL, hooks_only};
use crate::marks::mark_rst_ttl;
use crate::packet::{
    TCP_FLAG_RST, TCP_FLAG_SYN, classify_payload, load_addr, parse_segment, skb_cookie,
};
use crate::sock::read_keepalive;

/// cgroup_skb ingress on the cgroup v2 root, watched ports only: remembers the TTL / hop
/// limit each peer's packets arrive with and the TTL of each RST, so a RST forged by a
/// middlebox (a TTL that differs from the peer's own) can be told from the peer's own; and
/// records data segments for idle tracking. Never drops anything; unwatched traffic costs a
/// few packet loads and one array lookup.
#[cgroup_skb(ingress)]
pub fn ingress_ttl(ctx: SkBuffContext) -> i32 {
    if !hooks_only() {
        let _ = observe_ingress(&ctx);
    }
    1
}

#[inline(always)]
pub(crate) fn observe_ingress(ctx: &SkBuffContext) -> Option<()> {
    let segment = parse_segment(ctx, true)?;
    if segment.flags & TCP_FLAG_RST != 0 {
        let cookie = skb_cookie(ctx);
        if cookie != 0 {
            mark_rst_ttl(cookie, segment.ttl);
        }
        return Some(());
    }
    let handshake = segment.flags & TCP_FLAG_SYN != 0;
    // The peer's own TTL, from its handshake and data segments: its bare ACKs and FINs come
    // the same way and would only repeat it (a short connection's lookups are halved).
    if handshake || segment.payload > 0 {
        let remote = load_addr(ctx, segment.source_addr, segment.v6)?;
        // Write only on change: the common case is a lookup and nothing else.
        // SAFETY: the value is copied out at once.
        let known = unsafe { PEER_TTL.get(&remote) }.copied();
        if known != Some(segment.ttl) {
            let _ = PEER_TTL.insert(&remote, &segment.ttl, 0);
        }
    }
    // A handshake segment without data belongs to no tracked flow: tracking starts at the
    // first data segment (see `note_segment`).
    if handshake && segment.payload == 0 {
        return Some(());
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
    if !hooks_only() {
        let _ = observe_egress(&ctx);
    }
    1
}

#[inline(always)]
pub(crate) fn observe_egress(ctx: &SkBuffContext) -> Option<()> {
    let segment = parse_segment(ctx, false)?;
    // A handshake segment without data belongs to no tracked flow (see `observe_ingress`).
    if segment.flags & TCP_FLAG_SYN != 0 && segment.payload == 0 {
        return Some(());
    }
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
