//! Flow activity (`ACTIVITY`): the last data each way, idle gaps and payload classes of a
//! watched flow, kept from its first data segment to TCP_CLOSE; userspace scans it for idle
//! flows.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_skc_to_tcp_sock};
use aya_ebpf::programs::SkBuffContext;
use core::ffi::c_void;
use tracer_ebpf::{AF_INET, AF_INET6, FlowActivity, counter, flag, kind, payload_class, tcp_state};

use crate::emit::{Record, emit, flow_owner, put};
use crate::hints;
use crate::maps::{
    ACTIVITY, ACTIVITY_HINT, ACTIVITY_HINT_SLOTS, ACTIVITY_SCRATCH, BPF_NOEXIST, IDLE_MARK_NS,
    count,
};
use crate::packet::{Segment, load_addr};
use crate::slots::{is_quiet, ship_quiet};
use crate::sock::{Tuple, read_keepalive, read_sock_netns};

/// Adds `delta` to the flow's counter in `ACTIVITY_HINT` (see `hints`).
#[inline(always)]
fn add_hint(cookie: u64, delta: u32) {
    hints::add(&ACTIVITY_HINT, ACTIVITY_HINT_SLOTS, cookie, delta);
}

/// Whether the flow may have an `ACTIVITY` entry (false: it certainly has none).
#[inline(always)]
pub(crate) fn may_have_activity(cookie: u64) -> bool {
    hints::may_have(&ACTIVITY_HINT, ACTIVITY_HINT_SLOTS, cookie)
}

/// At TCP_CLOSE: the flow's activity record goes, and its hint with it.
#[inline(always)]
pub(crate) fn forget_activity(cookie: u64) {
    if may_have_activity(cookie) && ACTIVITY.remove(&cookie).is_ok() {
        add_hint(cookie, u32::MAX);
    }
}

/// Starts idle tracking of a watched flow at its first data segment (a flow that never
/// carries data costs nothing here), with its tuple and netns; the entry is removed at
/// TCP_CLOSE. Not inlined: it keeps the programs' register pressure and stack down.
#[inline(never)]
pub(crate) fn start_activity(ctx: &SkBuffContext, cookie: u64, segment: &Segment) {
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
    put(&mut activity.gap_ns, 0);
    put(&mut activity.resumed_ns, 0);
    activity.keepalive_ns = now;
    put(&mut activity.tx_first_ns, 0);
    put(&mut activity.rx_first_ns, 0);
    activity.keepalive = read_keepalive(tp as *const u8);
    activity.netns = read_sock_netns(tp as *const u8);
    activity.local_port = local_port;
    activity.remote_port = remote_port;
    activity.family = if segment.v6 { AF_INET6 } else { AF_INET } as u8;
    activity.tx_class = payload_class::NONE;
    activity.rx_class = payload_class::NONE;
    activity._pad = 0;
    // Counted before the entry exists: the hint never says "none" for a flow that has one.
    add_hint(cookie, 1);
    // BPF_NOEXIST: the other direction's program may have created it a moment ago.
    if ACTIVITY.insert(&cookie, activity, BPF_NOEXIST).is_err() {
        add_hint(cookie, u32::MAX);
        // SAFETY: the value is not kept.
        if unsafe { ACTIVITY.get(&cookie) }.is_none() {
            count(counter::ACTIVITY_TABLE_FULL);
        }
    }
}

/// Records a segment in the flow's activity (data segments also as data); returns the
/// record for further updates, None when the flow is not tracked.
#[inline(always)]
pub(crate) fn note_segment(
    ctx: &SkBuffContext,
    cookie: u64,
    segment: &Segment,
) -> Option<&'static mut FlowActivity> {
    if cookie == 0 {
        return None;
    }
    let payload = segment.payload;
    if payload == 0 && !may_have_activity(cookie) {
        return None;
    }
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

/// After the class of a flow's first data segment in one direction was recorded: a flow
/// already reported gets it as an event; a quiet flow stays quiet unless its answer may be a
/// TLS mismatch, and then sends what it recorded (its first payloads included).
#[inline(always)]
pub(crate) fn report_first_payload(activity: &FlowActivity, cookie: u64, received: bool) {
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
