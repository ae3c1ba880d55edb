//! The TCP state machine (`sock:inet_sock_set_state`): flows open and close here, and
//! everything else hangs off the slot made at connect() or accept.

use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;
use tracer_ebpf::{SockOwner, counter, flag, kind, tcp_state};

use crate::emit::{Record, emit, listener, listener_key};
use crate::maps::{LISTENERS, TEST_SKIP_CLOSE, count, offset, ready};
use crate::slots::{
    Quiet, forget_counted, forget_flow, note_quiet, open_accepted, open_connect, remember_listener,
    ship_quiet,
};
use crate::sock::{Tuple, cookie_of, is_tcp_sock, read_addrs, read_ports, socket_error};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    // SAFETY: reading our own read-only global.
    let skip = match unsafe { core::ptr::read_volatile(&raw const TEST_SKIP_CLOSE) } {
        0 => false,
        3 => !matches!(
            old_state as u8,
            tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::CLOSE | tcp_state::LISTEN
        ),
        _ => new_state as u8 == tcp_state::CLOSE,
    };
    if ready() && !skip {
        on_state_change(sk, old_state as u8, new_state as u8);
    }
    0
}

#[inline(always)]
pub(crate) fn on_state_change(sk: *const u8, old_state: u8, new_state: u8) {
    if new_state == tcp_state::SYN_RECV {
        // A child socket cloned from a listener. Until 6.18 this fires before the clone gets
        // its own cookie and remote port (inet_csk_clone_lock sets them after): it still
        // carries the listener's. The flow is opened when it reaches ESTABLISHED, a moment
        // later, under its own cookie. Nothing is read for it.
        return;
    }
    // Ports first (most sockets stop here), addresses only when something is sent.
    let Some(ports) = read_ports(sk) else {
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
    if new_state == tcp_state::ESTABLISHED && old_state == tcp_state::SYN_RECV {
        open_accepted(cookie, sk, ports.local_port);
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
    let (quiet, owner) = note_quiet(cookie, sk, &mut record);
    match quiet {
        Quiet::Recorded => return,
        Quiet::Counted => {
            // Kept, where error reports follow, until the socket is destroyed (see
            // `slot::COUNTED`).
            if new_state == tcp_state::CLOSE && offset!(counted_until_destroy) == 0 {
                forget_counted(cookie);
            }
            return;
        }
        _ => {}
    }
    let Some(tuple) = read_addrs(sk, &ports) else {
        count(counter::READ_FAILED);
        return;
    };
    let key = listener_key(record.netns, tuple.local_port);
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
        report_change::<true>(&record, &tuple, owner, matches!(quiet, Quiet::Ends));
    } else {
        report_change::<false>(&record, &tuple, owner, matches!(quiet, Quiet::Ends));
    }
}

/// Sends a state change (after what the flow recorded while quiet, when it stops being
/// quiet); at CLOSE the flow's kernel records go.
#[inline(always)]
pub(crate) fn report_change<const CLOSING: bool>(
    record: &Record,
    tuple: &Tuple,
    owner: &SockOwner,
    ends_quiet: bool,
) {
    if ends_quiet {
        ship_quiet(record.cookie, tuple);
    }
    emit(record, tuple, owner);
    if CLOSING {
        forget_flow(record.cookie);
    }
}
