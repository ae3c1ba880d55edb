//! Quiet-flow slots (`FLOWS`): a flow's owner and its state changes kept in the kernel while
//! nothing about it needs saying; a clean close becomes one summary, anything else ships the
//! recorded history first (see `tracer_ebpf::FlowSlot`).

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use tracer_ebpf::{
    FlowHistory, FlowSlot, ListenerKey, SockOwner, counter, flag, kind, payload_class, slot,
    tcp_state,
};

use crate::activity::{forget_activity, may_have_activity};
use crate::emit::{
    NO_OWNER, Record, emit, flow_owner, listener, listener_key, put, set_current_owner,
    wakeup_flag, write_event,
};
use crate::hints;
use crate::isn::{ISN_BOTH, established_isns, keep_isns, kept_isns, note_sequence};
use crate::maps::{
    ACTIVITY, COUNTED_HINT, COUNTED_HINT_SLOTS, EVENTS, FLOWS, LISTENERS, SLOT_SCRATCH, count,
    netns_watched,
};
use crate::sock::{Ports, Tuple, read_addrs, read_sock_netns, watched_tuple};

/// At TCP_CLOSE: the flow's slot and activity record go.
#[inline(always)]
pub(crate) fn forget_flow(cookie: u64) {
    forget_activity(cookie);
    let _ = FLOWS.remove(&cookie);
}

/// A refused connect counted as a repeat, done with (its socket destroyed, or closed where
/// no error report follows): its slot goes, and its count in `COUNTED_HINT`.
#[inline(always)]
pub(crate) fn forget_counted(cookie: u64) {
    forget_flow(cookie);
    hints::add(&COUNTED_HINT, COUNTED_HINT_SLOTS, cookie, u32::MAX);
}

/// Where the destroy program finds no watched ports (TCP has cleared a refused connect's by
/// then): the socket's slot, if it is a counted refusal's, goes.
#[inline(always)]
pub(crate) fn forget_if_counted(cookie: u64) {
    if hints::may_have(&COUNTED_HINT, COUNTED_HINT_SLOTS, cookie) && is_counted(cookie) {
        forget_counted(cookie);
    }
}

/// listen(): remembers the current process as the owner of the sockets the listener on
/// `port` will accept. Not inlined: the owner is built in this frame only.
#[inline(never)]
pub(crate) fn remember_listener(key: &ListenerKey) {
    let mut owner = SockOwner::default();
    set_current_owner(&mut owner);
    if LISTENERS.insert(key, &owner, 0).is_err() {
        count(counter::LISTENER_TABLE_FULL);
    }
}

/// connect(): a new flow owned by the calling process (process context). Not inlined: it
/// keeps the state change program's stack down.
#[inline(never)]
pub(crate) fn open_connect(cookie: u64, sk: *const u8, old_state: u8, new_state: u8) {
    open_flow(cookie, sk, old_state, new_state, 0, |owner, _| {
        set_current_owner(owner);
    });
}

/// A child socket cloned from a listener (softirq) that completed its handshake: a new flow
/// owned by the listener's process, opened (LISTEN -> SYN_RECV) and established now.
#[inline(never)]
pub(crate) fn open_accepted(cookie: u64, sk: *const u8, local_port: u16) {
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
pub(crate) fn open_flow(
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
    // Outside the `--netns` set: no slot, and the flow's events are not sent (see `emit`).
    if !netns_watched(netns) {
        return;
    }
    set_owner(&mut slot.owner, netns);
    slot.netns = netns;
    slot.shipped = slot::QUIET;
    slot.opened_old = old_state;
    slot.opened_new = new_state;
    // Zero fields one by one (see `put`).
    put(&mut slot.latest_old, 0);
    put(&mut slot.latest_new, 0);
    put(&mut slot._pad, 0);
    put(&mut slot._pad2, 0);
    // An accepted flow is opened as its handshake completes: both ISNs are there.
    let (isn_flags, isn_sent, isn_received) = if flags & flag::ACCEPTED != 0 {
        let (sent, received) = established_isns(sk);
        (ISN_BOTH, sent, received)
    } else {
        (0, 0, 0)
    };
    put(&mut slot.isn_flags, isn_flags);
    put(&mut slot.isn_sent, isn_sent);
    put(&mut slot.isn_received, isn_received);
    // SAFETY: helper without arguments.
    slot.opened_ns = unsafe { bpf_ktime_get_boot_ns() };
    // An accepted flow is opened as it is established (see `open_accepted`).
    put(
        &mut slot.established_ns,
        if flags & flag::ACCEPTED != 0 {
            slot.opened_ns
        } else {
            0
        },
    );
    put(&mut slot.latest_ns, 0);
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
        flags: flags | slot.isn_flags,
        isn_sent: slot.isn_sent,
        isn_received: slot.isn_received,
        ..Default::default()
    };
    emit(&record, &tuple, &slot.owner);
}

/// What a state change means for a quiet flow.
pub(crate) enum Quiet {
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

/// Records a state change of a quiet flow, or turns a clean close into its summary. A change
/// that will be sent gets the socket's sequence numbers (see `note_sequence`), in the arms
/// that send it: no branch of its own.
/// Also gives the record its netns and returns the flow's owner (NO_OWNER without a slot),
/// from the slot where there is one: no second lookup, no socket read.
#[inline(always)]
pub(crate) fn note_quiet(
    cookie: u64,
    sk: *const u8,
    record: &mut Record,
) -> (Quiet, &'static SockOwner) {
    let Some(slot) = FLOWS.get_ptr_mut(&cookie) else {
        record.netns = read_sock_netns(sk);
        note_sequence(sk, record);
        return (Quiet::No, &NO_OWNER);
    };
    // SAFETY: a live map value, written only by this flow's own events.
    let slot = unsafe { &mut *slot };
    record.netns = slot.netns;
    let quiet = note_slot(slot, cookie, sk, record);
    (quiet, &slot.owner)
}

/// `note_quiet` for a flow with a slot.
#[inline(always)]
fn note_slot(slot: &mut FlowSlot, cookie: u64, sk: *const u8, record: &mut Record) -> Quiet {
    match slot.shipped {
        slot::QUIET => {}
        slot::COUNTED => return Quiet::Counted,
        _ => {
            note_sequence(sk, record);
            return Quiet::No;
        }
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    match record.new_state {
        tcp_state::ESTABLISHED if slot.established_ns == 0 => {
            slot.established_ns = now;
            // A connect()ed flow's ISNs (an accepted one opens established, ISNs kept).
            keep_isns(slot, sk);
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
            kept_isns(slot, record);
            record.detail =
                (now.saturating_sub(slot.opened_ns) / 1_000_000).min(i32::MAX as u64) as i32;
            Quiet::Summarised
        }
        // A connect or handshake that ends without ESTABLISHED, or an error: not clean.
        tcp_state::CLOSE => {
            note_sequence(sk, record);
            Quiet::Ends
        }
        // The peer closes on our request without a word: it may not speak what we sent (a
        // ClientHello to a plaintext port, or plaintext to a TLS server that closes silently).
        tcp_state::CLOSE_WAIT
            if slot.opened_new == tcp_state::SYN_SENT && request_unanswered(cookie) =>
        {
            note_sequence(sk, record);
            Quiet::Ends
        }
        _ if slot.established_ns != 0 => {
            slot.latest_old = record.old_state;
            slot.latest_new = record.new_state;
            slot.latest_ns = now;
            Quiet::Recorded
        }
        _ => {
            note_sequence(sk, record);
            Quiet::Ends
        }
    }
}

/// States a socket closes from after the FIN handshake.
#[inline(always)]
pub(crate) fn closes_gracefully(old_state: u8) -> bool {
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
pub(crate) fn request_unanswered(cookie: u64) -> bool {
    // SAFETY: fields are read at once.
    may_have_activity(cookie)
        && unsafe { ACTIVITY.get(&cookie) }
            .is_some_and(|a| payload_class::request_unanswered(a.tx_class, a.rx_class))
}

/// Whether a flow is a refused connect counted as a repeat (see `slot::COUNTED`).
#[inline(always)]
pub(crate) fn is_counted(cookie: u64) -> bool {
    // SAFETY: the field is read at once.
    unsafe { FLOWS.get(&cookie) }.is_some_and(|flow| flow.shipped == slot::COUNTED)
}

/// Whether a flow is quiet: it has a slot and nothing of it was sent yet.
#[inline(always)]
pub(crate) fn is_quiet(cookie: u64) -> bool {
    // SAFETY: the field is read at once.
    unsafe { FLOWS.get(&cookie) }.is_some_and(|flow| flow.shipped == slot::QUIET)
}

/// Sends what a quiet flow recorded (its opening, ESTABLISHED, the first payload classes
/// each way, its latest state change, each with the time it happened) in one
/// `FLOW_HISTORY` record, and reports the flow event by event from now on. Called before the
/// first event of a flow that userspace must see. Not inlined: one copy per program.
#[inline(never)]
pub(crate) fn ship_quiet(cookie: u64, tuple: &Tuple) {
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
        flags: flag::DEFERRED | slot.isn_flags,
        ts_ns: slot.opened_ns,
        isn_sent: slot.isn_sent,
        isn_received: slot.isn_received,
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
pub(crate) fn send_flow_event(record: &Record, tuple: &Tuple) {
    if is_counted(record.cookie) {
        return;
    }
    ship_quiet(record.cookie, tuple);
    emit(record, tuple, flow_owner(record.cookie));
}

/// A flow whose CLOSE the state program did not see (see `programs::teardown`): sends its
/// end as `CLOSE_UNSEEN` (a quiet flow with what its slot recorded, as a summary would) and
/// removes its records. A refused connect counted as a repeat is only removed. Not inlined:
/// the backstop's only call.
#[inline(never)]
pub(crate) fn close_unseen(cookie: u64, sk: *const u8, ports: &Ports) {
    let Some(slot) = FLOWS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: a live map value, written only by this flow's own events.
    let slot = unsafe { &mut *slot };
    if slot.shipped != slot::COUNTED
        && let Some(tuple) = read_addrs(sk, ports)
    {
        let quiet = slot.shipped == slot::QUIET;
        // The last state the slot recorded (kept while the flow was quiet).
        let last = if slot.latest_new != 0 {
            slot.latest_new
        } else if slot.established_ns != 0 {
            tcp_state::ESTABLISHED
        } else {
            slot.opened_new
        };
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        let record = Record {
            kind: kind::CLOSE_UNSEEN,
            cookie,
            netns: slot.netns,
            old_state: if quiet { last } else { 0 },
            new_state: tcp_state::CLOSE,
            detail: (now.saturating_sub(slot.opened_ns) / 1_000_000).min(i32::MAX as u64) as i32,
            flags: if quiet {
                flag::WAS_QUIET | slot.isn_flags
            } else {
                0
            },
            isn_sent: slot.isn_sent,
            isn_received: slot.isn_received,
            ..Default::default()
        };
        emit(&record, &tuple, &slot.owner);
    }
    if slot.shipped == slot::COUNTED {
        forget_counted(cookie);
    } else {
        forget_flow(cookie);
    }
}
