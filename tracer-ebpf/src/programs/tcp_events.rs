//! TCP events on a socket or a received segment: retransmits (`tcp_retransmit_skb`,
//! `tcp_retransmit_synack`), RSTs both ways (`tcp_receive_reset`, `tcp_send_reset`, and
//! `kfree_skb` standing in for RSTs without a socket before 6.10) and socket errors
//! (`inet_sk_error_report`).

use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_ebpf::{RepeatKey, flag, kind, tcp_state};

use crate::emit::{NO_OWNER, Record, emit, emit_for_listener};
use crate::isn::{note_request, note_sequence};
use crate::maps::{PEER_TTL, offset, ready};
use crate::marks::rst_ttl;
use crate::packet::{TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN, peer_key, received_segment};
use crate::repeats::{counted_as_repeat, refusal_counted};
use crate::slots::{is_counted, send_flow_event};
use crate::sock::{cookie_of, field, is_tcp_sock, read_sock_netns, socket_error, watched_tuple};

/// Emits a non-state-change event for a full or minimal socket.
#[inline(always)]
pub(crate) fn emit_for_sock(sk: *const u8, event_kind: u8, detail: i32, flags: u16) {
    let Some(tuple) = watched_tuple(sk) else {
        return;
    };
    let state: u8 = field(sk, offset!(skc_state));
    let cookie = cookie_of(sk);
    let (mut ttl, mut peer_ttl) = (0, 0);
    if event_kind == kind::RESET_RECEIVED {
        // The ingress program saw this RST a moment ago, before TCP processed it.
        ttl = rst_ttl(cookie);
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
    let mut record = Record {
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
    note_sequence(sk, &mut record);
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
            let soft: i32 = field(sk, offset!(sk_err_soft));
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

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if !ready() {
        return 0;
    }
    // A refusal counted as a repeat reports its error too (twice per refusal in a storm,
    // after its CLOSE): its slot says so until the socket is destroyed (see
    // `slot::COUNTED`). Checked first, before the socket is read, since a refusal storm is
    // where this program runs most.
    if is_counted(cookie_of(sk)) {
        return 0;
    }
    if is_tcp_sock(sk) {
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
    let mut record = Record {
        kind: kind::SYNACK_RETRANSMIT,
        cookie: cookie_of(req),
        netns,
        old_state: tcp_state::NEW_SYN_RECV,
        new_state: tcp_state::NEW_SYN_RECV,
        detail: 0,
        flags: flag::ACCEPTED,
        ..Default::default()
    };
    note_request(req, &mut record);
    emit_for_listener(&record, &tuple);
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
        if field::<u8>(sk, offset!(skc_state)) == tcp_state::LISTEN {
            reset_from_listener(ctx.arg(1), reason);
        } else {
            emit_for_sock(sk, kind::RESET_SENT, reason, 0);
        }
        return 0;
    }
    // No socket (a segment to a port nobody listens on; this tracepoint fires for it since
    // Linux 6.10, older kernels are served by `kfree_skb`).
    reset_without_socket(ctx.arg(1), reason);
    0
}

/// A RST a listener sent for a segment of no connection it knows (an ACK or data arriving
/// after the connection was closed or aborted here, or whose state was lost): the listener
/// has no peer, so the tuple comes from the segment, reversed. The listener's process owns
/// the port.
#[inline(always)]
fn reset_from_listener(skb: *const u8, reason: i32) {
    let Some((tuple, netns, _, _)) = received_segment(skb) else {
        return;
    };
    let record = Record {
        kind: kind::RESET_SENT,
        cookie: 0,
        netns,
        old_state: tcp_state::LISTEN,
        new_state: tcp_state::LISTEN,
        detail: reason,
        ..Default::default()
    };
    emit_for_listener(&record, &tuple);
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
    // UDP drops with the same reason: `reset_without_socket` takes TCP segments only.
    reset_without_socket(ctx.arg(0), 0);
    0
}

/// A RST the stack sent for a TCP segment that matched no socket: the tuple comes from the
/// segment that provoked it, reversed, since the RST goes back to its sender. Repeats within
/// the window are counted instead of sent.
#[inline(always)]
fn reset_without_socket(skb: *const u8, reason: i32) {
    if let Some((tuple, netns, tcp_flags, seq)) = received_segment(skb) {
        // No RST answers a RST (a dropped one, seen by `kfree_skb`).
        if tcp_flags & TCP_FLAG_RST != 0 {
            return;
        }
        // Only a RST answering a SYN says nothing listens; one answering any other segment
        // says the connection is gone here.
        let flags = if tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
            flag::NO_SOCKET | flag::ANSWERS_SYN
        } else {
            flag::NO_SOCKET
        };
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
            flags,
        };
        if counted_as_repeat(&key, &NO_OWNER, tuple.remote_port) {
            return;
        }
        let mut record = Record {
            kind: kind::RESET_SENT,
            cookie: 0,
            netns,
            old_state: tcp_state::CLOSE,
            new_state: tcp_state::CLOSE,
            detail: reason,
            flags,
            ..Default::default()
        };
        // The SYN it answers carries the client's ISN: the key to its connect() elsewhere
        // (userspace takes it when `ANSWERS_SYN` says the segment was a SYN).
        record.isn_received = seq;
        record.flags |= flag::SEQ_RAW;
        emit(&record, &tuple, &NO_OWNER);
    }
}
