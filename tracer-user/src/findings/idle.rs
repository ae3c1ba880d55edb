//! Idle flows against the NAT idle timeout: when the kernel's activity table says a flow has
//! been idle long enough to be at risk, and the verdicts on flows that broke after an idle
//! period (`idle_at_risk`, `nat_idle_timeout`, `half_open`).
//!
//! Why this is cheap: the kernel records the last segment of each watched flow that carries
//! data in the `ACTIVITY` map as packets pass (cgroup_skb, watched ports only), with the
//! flow's tuple; a flow that carries data cleanly is never sent to userspace at all. The
//! collector scans that map every tenth of the threshold (`scan_interval_ns`) and reports
//! the flows idle past 80% of it: no per-flow state in userspace, whatever the number of
//! flows, and no event per flow.

use tracer_ebpf::FlowActivity;

use super::*;
use crate::{
    config::NatIdle,
    events::keepalive::KeepaliveSettings,
    events::{Event, Side},
};

/// How often the kernel's activity table is scanned: a tenth of the threshold (so a flow is
/// reported between 80% and 90% of it), at least every 100 ms and at most every 30 s.
pub fn scan_interval_ns(nat: &NatIdle) -> u64 {
    (nat.threshold_ns() / 10).clamp(100_000_000, 30_000_000_000)
}

/// The outcome of one scheduled check.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Not idle long enough yet; check again at this time.
    Later(u64),
    /// Idle (no segment either way) for `idle_ns` with keepalive that will not save it:
    /// report (once per idle period, keyed by `last_data_ns`, the time of the last segment),
    /// then check again at the time given.
    AtRisk {
        idle_ns: u64,
        last_data_ns: u64,
        keepalive: KeepaliveSettings,
        next: u64,
    },
    /// The flow is idle but protected, or already reported for this idle period.
    Quiet(u64),
}

/// Decides what a due check finds. `reported_for` is the last-data time of the idle period
/// already reported for this flow, if any.
pub fn check(
    activity: &FlowActivity,
    now_ns: u64,
    nat: &NatIdle,
    hz: u32,
    reported_for: Option<u64>,
) -> Check {
    let threshold = nat.threshold_ns();
    let warn_at = threshold / 5 * 4;
    // What a NAT counts: any segment either way (a peer's keepalive probes protect too).
    let last_data = activity
        .last_packet_ns
        .max(activity.last_rx_ns)
        .max(activity.last_tx_ns);
    let idle = now_ns.saturating_sub(last_data);
    if idle < warn_at {
        return Check::Later(last_data + warn_at);
    }
    let next = now_ns + (threshold / 5).max(100_000_000);
    let keepalive = KeepaliveSettings::from_kernel(&activity.keepalive, hz);
    if reported_for == Some(last_data) || keepalive.protects(nat.threshold) {
        return Check::Quiet(next);
    }
    Check::AtRisk {
        idle_ns: idle,
        last_data_ns: last_data,
        keepalive,
        next,
    }
}

impl super::Correlator {
    /// The idle period (ms) before this event, if it was past the NAT idle threshold.
    pub(super) fn idle_broke(&self, event: &Event) -> Option<u32> {
        // An idle period that ended within the last two minutes still explains a break: the
        // first data after it is retransmitted for a while before anything gives up.
        let idle_ms = event.idle?.before_ms(120_000);
        (u128::from(idle_ms) * 1_000_000 >= self.config.nat_idle.threshold.as_nanos())
            .then_some(idle_ms)
    }

    pub(super) fn idle_detail(&self, idle_ms: u32, flow: &Flow) -> IdleDetail {
        IdleDetail {
            idle_s: f64::from(idle_ms) / 1000.0,
            threshold_s: self.config.nat_idle.threshold.as_secs_f64(),
            keepalive: flow.keepalive,
        }
    }

    /// A flow idle past the NAT threshold broke on next use: `nat_idle_timeout` on the client
    /// side, `half_open` on the server side (the peer is gone; this end kept the socket).
    pub(super) fn idle_break(
        &mut self,
        event: &Event,
        flow: &mut Flow,
        how: &str,
        out: &mut Vec<Finding>,
    ) {
        if flow.track.idle_break_reported {
            return;
        }
        flow.track.idle_break_reported = true;
        flow.track.verdict_given = true;
        let idle_ms = event.idle.map_or(0, |i| i.before_ms(120_000));
        let detail = self.idle_detail(idle_ms, flow);
        let nat = self.config.nat_idle;
        let server = flow.side == Some(Side::Server);
        let mut f = if server {
            let mut f = self.finding(FindingKind::HalfOpen, Severity::Warning, event);
            f.summary = format!(
                "The client {} is gone: after {:.0} s idle (NAT idle timeout {nat}), {how}. \
                 This server held a half-open connection.",
                flow.remote, detail.idle_s
            );
            f
        } else {
            let mut f = self.finding(FindingKind::NatIdleTimeout, Severity::Error, event);
            f.summary = format!(
                "The connection to {} sat idle for {:.0} s, past the NAT idle timeout of \
                 {nat}, and broke on next use: {how}.",
                flow.remote, detail.idle_s
            );
            f
        };
        f.src = flow.local;
        f.dst = flow.remote;
        f.remedy = remedies::nat_idle(flow.remote, nat.threshold, flow.keepalive.as_ref(), server);
        f.evidence = flow.track.evidence.clone();
        f.first_ns = flow.first_ns;
        f.idle = Some(detail);
        out.push(f);
    }

    /// A scheduled check found the flow idle for 80% of the threshold without keepalive
    /// protection (see `idle::check`).
    pub fn idle_at_risk(&mut self, flow: &Flow, netns: u32, idle_ns: u64, now_ns: u64) -> Finding {
        let id = self.next_id;
        self.next_id += 1;
        let nat = self.config.nat_idle;
        let idle_s = idle_ns as f64 / 1e9;
        let keepalive = match &flow.keepalive {
            Some(k) if k.enabled => format!(
                "keepalive is on but first probes after {:.0} s, too late",
                k.idle_s
            ),
            Some(_) => "SO_KEEPALIVE is off".to_owned(),
            None => "keepalive state unknown".to_owned(),
        };
        Finding {
            id,
            kind: FindingKind::IdleAtRisk,
            severity: Severity::Warning,
            boot_ns: now_ns,
            src: flow.local,
            dst: flow.remote,
            netns,
            owner: flow.owner.clone(),
            side: flow.side,
            summary: format!(
                "The connection to {} has been idle for {idle_s:.0} s: at {nat} the NAT will \
                 forget it, and {keepalive}.",
                flow.remote
            ),
            remedy: remedies::nat_idle(
                flow.remote,
                nat.threshold,
                flow.keepalive.as_ref(),
                flow.side == Some(Side::Server),
            ),
            evidence: flow.track.evidence.clone(),
            count: 1,
            first_ns: now_ns.saturating_sub(idle_ns),
            last_ns: now_ns,
            update_of: None,
            tls: None,
            peer: None,
            pod: flow.pod.clone().flatten(),
            idle: Some(IdleDetail {
                idle_s,
                threshold_s: nat.threshold.as_secs_f64(),
                keepalive: flow.keepalive,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::Keepalive;

    use super::*;
    use crate::events::keepalive::sample_kernel_keepalive;

    const SEC: u64 = 1_000_000_000;

    fn activity(last_ns: u64, keepalive: Keepalive) -> FlowActivity {
        FlowActivity {
            last_rx_ns: last_ns,
            last_tx_ns: last_ns / 2,
            keepalive,
            ..Default::default()
        }
    }

    #[test]
    fn warns_at_eighty_percent_once_per_idle_period() {
        let nat = NatIdle::parse("10s").unwrap();
        let a = activity(100 * SEC, sample_kernel_keepalive(false, 0));
        assert_eq!(
            check(&a, 105 * SEC, &nat, 250, None),
            Check::Later(108 * SEC)
        );
        let Check::AtRisk {
            idle_ns,
            last_data_ns,
            next,
            ..
        } = check(&a, 108 * SEC, &nat, 250, None)
        else {
            panic!("at risk")
        };
        assert_eq!(
            (idle_ns, last_data_ns, next),
            (8 * SEC, 100 * SEC, 110 * SEC)
        );
        assert_eq!(
            check(&a, 110 * SEC, &nat, 250, Some(100 * SEC)),
            Check::Quiet(112 * SEC)
        );
        // A new idle period is a new warning.
        let later = activity(200 * SEC, sample_kernel_keepalive(false, 0));
        assert!(matches!(
            check(&later, 209 * SEC, &nat, 250, Some(100 * SEC)),
            Check::AtRisk { .. }
        ));
    }

    #[test]
    fn keepalive_below_the_threshold_protects() {
        let nat = NatIdle::parse("10s").unwrap();
        let a = activity(100 * SEC, sample_kernel_keepalive(true, 250));
        assert!(matches!(
            check(&a, 109 * SEC, &nat, 250, None),
            Check::Quiet(_)
        ));
    }
}
