//! Slots whose end the kernel never reported. Under heavy churn the kernel, about once in a
//! million connections on Linux 6.18, runs none of a socket's last programs (its FIN_WAIT2 and
//! CLOSE changes, and its destroy) and counts no recursion miss for them: the socket is gone,
//! its peer closed cleanly, and its `FLOWS` slot (and activity record) stays for good. Nothing
//! in the kernel can notice, so the collector sweeps the table now and then. A slot silent
//! (no state change, no packet) for far longer than a closing socket lives is a candidate;
//! the kernel is then asked whether its socket still exists (`kernel::sockdiag`, by cookie,
//! in the flow's namespace), and only a slot whose socket is gone is dropped. Where that
//! cannot be asked (kernels that key flows by address, a namespace no process is in), only a
//! quiet slot last seen closing (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK: states an orphaned
//! socket leaves within minutes) is dropped. Each is counted (`slots_expired`); nothing is
//! said about how such a flow ended.

use std::time::Duration;

use tracer_ebpf::{FlowSlot, slot, tcp_state};

/// How long a flow must have been silent before its slot is judged: far past the longest an
/// orphaned socket stays in a closing state (`tcp_fin_timeout`, at most 120 s; a FIN
/// retransmitted `tcp_orphan_retries` times).
pub const MAX_AGE: Duration = Duration::from_secs(30 * 60);

/// How often the table is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);

/// The sweep's age and period: `MAX_AGE` and `SWEEP_EVERY`, or both the test hook
/// `SHUFFLETRACE_TEST_SLOT_MAX_AGE_MS` (never set in use).
pub fn policy() -> (Duration, Duration) {
    match std::env::var("SHUFFLETRACE_TEST_SLOT_MAX_AGE_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        Some(ms) => (Duration::from_millis(ms), Duration::from_millis(ms)),
        None => (MAX_AGE, SWEEP_EVERY),
    }
}

/// What the sweep does with a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heard from lately: kept.
    Keep,
    /// Silent, in a state a socket may stay in for days (open, CLOSE_WAIT, or followed event
    /// by event): dropped only if the kernel says its socket is gone.
    IfGone,
    /// Silent, quiet and last seen closing: dropped unless the kernel says its socket is
    /// still there (a half-closed socket its owner keeps).
    UnlessAlive,
}

/// The verdict on a slot at `now_ns` (boot clock): silent when neither its last state change
/// nor its last packet (`last_packet_ns`, when it carried data) is newer than `max_age`.
pub fn judge(
    slot: &FlowSlot,
    last_packet_ns: Option<u64>,
    now_ns: u64,
    max_age: Duration,
) -> Verdict {
    let last_seen = slot
        .opened_ns
        .max(slot.established_ns)
        .max(slot.latest_ns)
        .max(last_packet_ns.unwrap_or(0));
    if now_ns.saturating_sub(last_seen) <= max_age.as_nanos() as u64 {
        return Verdict::Keep;
    }
    let closing = matches!(
        slot.latest_new,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    if slot.shipped == slot::QUIET && closing {
        Verdict::UnlessAlive
    } else {
        Verdict::IfGone
    }
}

/// Whether a slot with this verdict goes, given what the kernel said of its socket (`alive`:
/// None when it could not be asked).
pub fn drops(verdict: Verdict, alive: Option<bool>) -> bool {
    match verdict {
        Verdict::Keep => false,
        Verdict::IfGone => alive == Some(false),
        Verdict::UnlessAlive => alive != Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000_000;

    fn slot(shipped: u8, latest_new: u8, latest_ns: u64) -> FlowSlot {
        FlowSlot {
            shipped,
            latest_new,
            latest_ns,
            opened_ns: MINUTE,
            established_ns: MINUTE,
            ..FlowSlot::default()
        }
    }

    #[test]
    fn a_quiet_flow_left_closing_goes_unless_its_socket_is_still_there() {
        let now = 100 * MINUTE;
        for state in [
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT2,
            tcp_state::CLOSING,
            tcp_state::LAST_ACK,
        ] {
            let verdict = judge(&slot(slot::QUIET, state, 60 * MINUTE), None, now, MAX_AGE);
            assert_eq!(verdict, Verdict::UnlessAlive);
            assert!(drops(verdict, None));
            assert!(drops(verdict, Some(false)));
            // Half-closed, kept by its owner: the kernel still has it.
            assert!(!drops(verdict, Some(true)));
            // Not yet: 30 minutes exactly.
            let verdict = judge(&slot(slot::QUIET, state, 70 * MINUTE), None, now, MAX_AGE);
            assert_eq!(verdict, Verdict::Keep);
        }
    }

    #[test]
    fn an_open_shipped_or_counted_flow_goes_only_when_the_kernel_says_its_socket_is_gone() {
        let now = 100 * MINUTE;
        let old = 10 * MINUTE;
        for slot in [
            // Established for hours, or CLOSE_WAIT (an owner that has not closed yet).
            slot(slot::QUIET, 0, 0),
            slot(slot::QUIET, tcp_state::CLOSE_WAIT, old),
            // Sent event by event: the collector follows it too.
            slot(slot::SHIPPED, tcp_state::FIN_WAIT2, old),
            // A refused connect kept until its socket is freed (the owner may hold it).
            slot(slot::COUNTED, tcp_state::FIN_WAIT2, old),
        ] {
            let verdict = judge(&slot, None, now, MAX_AGE);
            assert_eq!(verdict, Verdict::IfGone);
            assert!(!drops(verdict, None), "not when the kernel cannot be asked");
            assert!(!drops(verdict, Some(true)));
            assert!(drops(verdict, Some(false)));
        }
    }

    #[test]
    fn a_flow_heard_from_lately_is_kept_whatever_its_state() {
        let now = 100 * MINUTE;
        let old = 10 * MINUTE;
        // Half-closed and still receiving.
        let quiet = slot(slot::QUIET, tcp_state::FIN_WAIT2, old);
        assert_eq!(
            judge(&quiet, Some(now - MINUTE), now, MAX_AGE),
            Verdict::Keep
        );
        assert_eq!(judge(&quiet, Some(old), now, MAX_AGE), Verdict::UnlessAlive);
        // Opened a minute ago, never changed state since.
        let mut young = slot(slot::QUIET, 0, 0);
        young.opened_ns = now - MINUTE;
        young.established_ns = now - MINUTE;
        assert_eq!(judge(&young, None, now, MAX_AGE), Verdict::Keep);
        assert!(!drops(Verdict::Keep, Some(false)));
    }
}
