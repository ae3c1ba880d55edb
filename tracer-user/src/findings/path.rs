//! Path verdicts from retransmissions: unanswered SYNs (`connect_timeout`, with its update when
//! the socket gives up), retransmit storms, and SYN-ACKs without the final ACK
//! (`return_path_blocked`).

use tracer_ebpf::tcp_state;

use super::*;
use crate::events::{Event, Side, tcp_state_name};

impl Correlator {
    pub(super) fn retransmit(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
        if event.new_state == tcp_state::SYN_SENT && event.soft_error && event.detail != 0 {
            // The SYN is retried after an ICMP error: the error, not a drop, is the verdict.
            flow.track.syn_retransmits += 1;
            return self.socket_error(event, flow, out);
        }
        if event.new_state == tcp_state::SYN_SENT {
            flow.track.syn_retransmits += 1;
            // An ICMP error already explained this connect: the kernel retries regardless.
            if flow.track.timeout_reported || flow.track.verdict_given {
                return;
            }
            flow.track.timeout_reported = true;
            flow.track.first_syn_retransmit_ns = event.boot_ns;
            let waited = event.boot_ns.saturating_sub(flow.first_ns) as f64 / 1e9;
            let mut f = self.finding(FindingKind::ConnectTimeout, Severity::Error, event);
            f.summary = format!(
                "No answer from {}: the SYN was retransmitted after {waited:.1} s without a SYN-ACK \
                 or RST (packets are dropped on the way: firewall, security group or network ACL).",
                event.remote
            );
            f.remedy = remedies::connect_timeout(event.remote);
            f.evidence = flow.track.evidence.clone();
            f.first_ns = flow.first_ns;
            // The id is kept only if this line is printed on its own (see `Aggregator::offer`).
            flow.track.timeout_id = Some(f.id);
            out.push(f);
            return;
        }
        if self.idle_broke(event).is_some() {
            // The first data after an idle period past the NAT threshold is not acknowledged:
            // the NAT forgot the flow and drops it. A second retransmit makes it certain.
            flow.track.retransmits_after_idle += 1;
            if flow.track.retransmits_after_idle >= 2 {
                let how = format!(
                    "the first data after it was retransmitted {} times without an ACK",
                    flow.track.retransmits_after_idle
                );
                self.idle_break(event, flow, &how, out);
            }
            return;
        }
        let window = self.config.storm_window_ns;
        let threshold = self.config.storm_retransmits.max(1) as usize;
        let track = &mut flow.track;
        track.retransmits.push_back(event.boot_ns);
        while track.retransmits.len() > threshold {
            track.retransmits.pop_front();
        }
        let oldest = *track.retransmits.front().unwrap_or(&event.boot_ns);
        let in_window = event.boot_ns.saturating_sub(oldest) <= window;
        if track.retransmits.len() >= threshold
            && in_window
            && event.boot_ns >= track.storm_quiet_until_ns
        {
            // One finding per flow per window; a storm that goes on reports again after it.
            track.storm_quiet_until_ns = event.boot_ns + window;
            let span = event.boot_ns.saturating_sub(oldest) as f64 / 1e9;
            let total = flow.retransmits;
            let mut f = self.finding(FindingKind::RetransmitStorm, Severity::Warning, event);
            f.summary = format!(
                "The {} flow with {} retransmitted {threshold} segments in {span:.1} s ({total} \
                 since it was seen): packets are being lost on the path.",
                tcp_state_name(event.new_state),
                event.remote
            );
            f.remedy = remedies::retransmit_storm(event.remote);
            f.evidence = flow.track.evidence.clone();
            f.first_ns = oldest;
            out.push(f);
        }
    }

    pub(super) fn synack_retransmit(
        &mut self,
        event: &Event,
        flow: &mut Flow,
        out: &mut Vec<Finding>,
    ) {
        flow.track.synack_retransmits += 1;
        if flow.track.return_path_reported
            || flow.track.synack_retransmits < self.config.synack_retransmits.max(1)
        {
            return;
        }
        flow.track.return_path_reported = true;
        let mut f = self.finding(FindingKind::ReturnPathBlocked, Severity::Error, event);
        f.side = Some(Side::Server);
        f.summary = format!(
            "{} reached {} (SYN arrived) but the handshake never completes: {} SYN-ACKs were \
             sent without the final ACK coming back. The return path is blocked.",
            event.remote.ip(),
            event.local,
            flow.track.synack_retransmits + 1
        );
        f.remedy = remedies::return_path_blocked(event.local, event.remote.ip());
        f.evidence = flow.track.evidence.clone();
        f.first_ns = flow.first_ns;
        out.push(f);
    }

    /// The update line of a connect_timeout printed on its own: the socket gave up
    /// (ETIMEDOUT) or the application closed it.
    pub(super) fn timeout_update(
        &mut self,
        flow: &mut Flow,
        now_ns: u64,
        gave_up: bool,
    ) -> Option<Finding> {
        let original = flow.track.timeout_id.take()?;
        let last = flow.track.evidence.last()?.clone();
        let mut f = self.finding(FindingKind::ConnectTimeout, Severity::Error, &last);
        f.boot_ns = now_ns;
        f.src = flow.local;
        f.dst = flow.remote;
        f.owner = flow.owner.clone();
        f.pod = flow.pod.clone().flatten();
        f.count = 0;
        f.update_of = Some(original);
        f.first_ns = flow.first_ns;
        let waited = now_ns.saturating_sub(flow.first_ns) as f64 / 1e9;
        let retries = flow.track.syn_retransmits;
        f.summary = if gave_up {
            format!(
                "The connection to {} timed out (ETIMEDOUT): {retries} SYN retransmits over \
                 {waited:.1} s went unanswered.",
                flow.remote
            )
        } else {
            format!(
                "The application gave up on {} after {retries} unanswered SYN retransmits over \
                 {waited:.1} s and closed the socket.",
                flow.remote
            )
        };
        f.remedy = remedies::connect_timeout(flow.remote);
        f.evidence = flow.track.evidence.clone();
        Some(f)
    }
}
