//! Slots whose end the kernel never reported. Under heavy churn the kernel, about once in a
//! million connections on Linux 6.18, runs none of a socket's last programs (its FIN_WAIT2 and
//! CLOSE changes, and its destroy) and counts no recursion miss for them: the socket is gone,
//! its peer closed cleanly, and its `FLOWS` slot (and activity record) stays for good. Nothing
//! in the kernel can notice, so the collector sweeps the table now and then and drops the slots
//! of flows that were quiet, last seen closing (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK: states
//! an orphaned socket leaves within minutes) and silent since for far longer than that. Each
//! is counted (`slots_expired`); nothing is said about how such a flow ended.

use std::time::Duration;

use tracer_ebpf::{FlowSlot, slot, tcp_state};

/// How long a quiet flow may sit in a closing state, without a packet, before its slot is
/// dropped: far past the longest an orphaned socket stays there (`tcp_fin_timeout`, at most
/// 120 s; a FIN retransmitted `tcp_orphan_retries` times). A half-closed socket its owner
/// keeps open is the one legitimate case, and it is rare and usually not silent.
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

/// Whether a slot is stale at `now_ns` (boot clock): quiet, last seen closing, and neither
/// that change nor the flow's last packet (`last_packet_ns`, when it carried data) is newer
/// than `max_age`.
pub fn is_stale(
    slot: &FlowSlot,
    last_packet_ns: Option<u64>,
    now_ns: u64,
    max_age: Duration,
) -> bool {
    let closing = matches!(
        slot.latest_new,
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK
    );
    let last_seen = slot.latest_ns.max(last_packet_ns.unwrap_or(0));
    slot.shipped == slot::QUIET
        && closing
        && now_ns.saturating_sub(last_seen) > max_age.as_nanos() as u64
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
            ..FlowSlot::default()
        }
    }

    #[test]
    fn a_quiet_flow_left_closing_for_longer_than_the_age_is_stale() {
        let now = 100 * MINUTE;
        for state in [
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT2,
            tcp_state::CLOSING,
            tcp_state::LAST_ACK,
        ] {
            assert!(is_stale(
                &slot(slot::QUIET, state, 60 * MINUTE),
                None,
                now,
                MAX_AGE
            ));
            // Not yet: 30 minutes exactly.
            assert!(!is_stale(
                &slot(slot::QUIET, state, 70 * MINUTE),
                None,
                now,
                MAX_AGE
            ));
        }
    }

    #[test]
    fn open_shipped_counted_or_recently_active_flows_are_never_stale() {
        let now = 100 * MINUTE;
        let old = 10 * MINUTE;
        // Established for hours, or CLOSE_WAIT (an owner that has not closed yet): alive.
        assert!(!is_stale(&slot(slot::QUIET, 0, 0), None, now, MAX_AGE));
        assert!(!is_stale(
            &slot(slot::QUIET, tcp_state::CLOSE_WAIT, old),
            None,
            now,
            MAX_AGE
        ));
        // Sent event by event: the collector follows it itself.
        assert!(!is_stale(
            &slot(slot::SHIPPED, tcp_state::FIN_WAIT2, old),
            None,
            now,
            MAX_AGE
        ));
        // A refused connect kept until its socket is freed (the owner may hold it).
        assert!(!is_stale(
            &slot(slot::COUNTED, tcp_state::FIN_WAIT2, old),
            None,
            now,
            MAX_AGE
        ));
        // Half-closed and still receiving.
        let quiet = slot(slot::QUIET, tcp_state::FIN_WAIT2, old);
        assert!(!is_stale(&quiet, Some(now - MINUTE), now, MAX_AGE));
        assert!(is_stale(&quiet, Some(old), now, MAX_AGE));
    }
}
