//! The end of every TCP socket (`tcp:tcp_destroy_sock`), a backstop for the state program:
//! the kernel skips a program's run when the same program is already running on that CPU (a
//! softirq firing the tracepoint inside a run in process context). A skipped CLOSE would
//! leave the flow's slot in `FLOWS` for good (over months, enough to fill it) and the flow
//! unaccounted for. This separate program is not skipped with it: it finds the slot still
//! there, sends the flow's end as `CLOSE_UNSEEN` and removes it. In the common case (the
//! CLOSE was seen) it costs a port read and, on a watched port, one lookup. It is also where
//! a refused connect counted as a repeat loses its slot, kept past the CLOSE for the error
//! reports that follow it (see `tracer_ebpf::slot::COUNTED`): removed, nothing sent.

use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;

use crate::maps::{FLOWS, TEST_SKIP_CLOSE, offset, ready};
use crate::slots::{close_unseen, forget_if_counted};
use crate::sock::{cookie_of, read_ports};

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: reading our own read-only global.
    let skip = unsafe { core::ptr::read_volatile(&raw const TEST_SKIP_CLOSE) } >= 2;
    if !ready() || skip {
        return 0;
    }
    let Some(ports) = read_ports(sk) else {
        // A refused connect counted as a repeat: TCP has cleared its ports (tcp_disconnect
        // after a blocking connect), but its slot waited for this (see `slot::COUNTED`).
        if offset!(counted_until_destroy) != 0 {
            forget_if_counted(cookie_of(sk));
        }
        return 0;
    };
    let cookie = cookie_of(sk);
    // SAFETY: the value is not kept.
    if unsafe { FLOWS.get(&cookie) }.is_some() {
        close_unseen(cookie, sk, &ports);
    }
    0
}
