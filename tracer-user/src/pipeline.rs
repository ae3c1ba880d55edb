//! The collector: decoded events through the flow table and the correlator to the output.

use std::io::Write;

use aya::maps::{MapData, RingBuf};
use tracer_ebpf::tcp_state;
use tracing::warn;

use crate::{
    clock::BootClock,
    events::{self, Event, EventKind, ResetReasons},
    findings::{Aggregator, Config, Correlator, Finding},
    flows::FlowTable,
    idle::{self, ActivitySource, Check, KeepaliveSettings},
    metrics::Metrics,
    probes::KernelCounters,
    sinks::{Output, Totals},
    summaries::FlowSummaries,
};

/// Hands freed heap back to the kernel: glibc keeps it for reuse, and a 24/7 collector would
/// carry the high-water mark of one burst (the start-up BTF parses; 100,000 flows closing
/// at once) in its RSS forever.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no other effect.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Flows expired in one housekeeping pass above which freed memory is handed back.
const TRIM_AFTER_EXPIRED: usize = 10_000;

/// The userspace half of the data path (events -> flows -> findings -> sinks), and its
/// counts.
pub struct Pipeline<W: Write> {
    config: Config,
    pub output: Output<W>,
    pub flows: FlowTable,
    /// Clean quiet flows, counted (the kernel sends one summary record each).
    pub summaries: FlowSummaries,
    pub correlator: Correlator,
    pub aggregator: Aggregator,
    pub findings_only: bool,
    pub totals: Totals,
    pub reported: KernelCounters,
    /// Set when stdout is gone (a closed pipe): stop cleanly.
    pub output_closed: bool,
    /// Scratch buffer for the findings of one event.
    found: Vec<Finding>,
    /// When set, every finding line is also kept here (`shuffletrace probe` reads them).
    captured: Option<Vec<Finding>>,
    pub metrics: Option<Metrics>,
    /// Kubernetes pod attribution (`--host-root`).
    pub attributor: Option<crate::k8s::Attributor>,
    /// Period of `stats` lines, and when the last one was written.
    pub stats_interval_ns: u64,
    last_stats_ns: u64,
    /// Counts already given to the metrics (they take deltas).
    metered: Metered,
}

#[derive(Default)]
struct Metered {
    kernel: KernelCounters,
    evictions: u64,
    trace_bytes: u64,
}

impl<W: Write> Pipeline<W> {
    pub fn new(output: Output<W>, config: Config, reasons: ResetReasons, max_flows: usize) -> Self {
        Self {
            config,
            output,
            flows: FlowTable::new(max_flows),
            summaries: FlowSummaries::default(),
            correlator: Correlator::new(config, reasons),
            aggregator: Aggregator::new(config.aggregate_window_ns, max_flows),
            findings_only: false,
            totals: Totals::default(),
            reported: KernelCounters::default(),
            output_closed: false,
            found: Vec::new(),
            captured: None,
            metrics: None,
            attributor: None,
            stats_interval_ns: 60_000_000_000,
            last_stats_ns: BootClock::now_boot_ns(),
            metered: Metered::default(),
        }
    }

    /// Keeps every finding line in memory as well (see `take_captured`).
    pub fn capture(&mut self) {
        self.captured = Some(Vec::new());
    }

    pub fn take_captured(&mut self) -> Vec<Finding> {
        self.captured.take().unwrap_or_default()
    }

    fn write_finding(&mut self, finding: &Finding) {
        self.totals.finding_lines += 1;
        self.totals.findings += finding.count;
        if let Some(captured) = &mut self.captured {
            captured.push(finding.clone());
        }
        if let Some(metrics) = &self.metrics {
            let port = match finding.side {
                Some(crate::events::Side::Server) => finding.src.port(),
                _ => finding.dst.port(),
            };
            metrics.finding(finding.kind.name(), port, finding.count);
        }
        if !self.output_closed && self.output.finding(finding).is_err() {
            self.output_closed = true;
        }
    }

    /// Aggregates and prints the findings in `self.found`.
    fn publish(&mut self, cookie: u64) {
        let found = std::mem::take(&mut self.found);
        for mut finding in found {
            if finding.pod.is_none()
                && let Some(attributor) = self.attributor.as_mut()
            {
                finding.pod = attributor.by_netns(finding.netns);
            }
            let (lines, folded) = self.aggregator.offer(finding);
            if let Some(id) = folded
                && let Some(flow) = self.flows.get_mut(cookie)
            {
                Correlator::folded(flow, id);
            }
            for line in &lines {
                self.write_finding(line);
            }
        }
    }

    /// Attributes an event to its pod: by the flow's owner process, else by its netns; the
    /// answer is kept in the flow so each flow is looked up once.
    fn attribute(&mut self, event: &mut Event) {
        let Some(attributor) = self.attributor.as_mut() else {
            return;
        };
        let known = self
            .flows
            .get_mut(event.cookie)
            .and_then(|flow| flow.pod.clone());
        let pod = match known {
            Some(pod) => pod,
            None => {
                let pod = match &event.owner {
                    Some(owner) => attributor.by_pid(owner.pid),
                    None => None,
                }
                .or_else(|| attributor.by_netns(event.netns));
                if let Some(flow) = self.flows.get_mut(event.cookie) {
                    flow.pod = Some(pod.clone());
                }
                pod
            }
        };
        event.pod = pod;
    }

    fn process(&mut self, mut event: Event) {
        self.totals.events += 1;
        if let Some(metrics) = &self.metrics {
            metrics.event(event.kind.name());
        }
        if event.kind == EventKind::FlowSummary {
            // A clean flow the kernel never reported otherwise: counted, nothing to correlate.
            self.summaries.add(&event);
            if let Some(metrics) = &self.metrics {
                let (port, side) = crate::summaries::port_and_side(&event);
                metrics.clean_flow(port, side);
            }
            return;
        }
        self.flows.observe(&mut event);
        self.attribute(&mut event);
        let flow = self.flows.get_mut(event.cookie);
        self.correlator.on_event(&event, flow, &mut self.found);
        let tracked_from = match event.kind {
            EventKind::StateChange if event.new_state == tcp_state::ESTABLISHED => true,
            // The kernel starts tracking a flow's activity at its first data segment; a flow
            // whose ESTABLISHED check found nothing yet is checked again from here.
            EventKind::FirstPayload => self
                .flows
                .get_mut(event.cookie)
                .is_some_and(|flow| flow.idle_due_ns.is_none()),
            _ => false,
        };
        if tracked_from {
            // The first check is due when the flow could first have been idle for 80% of the
            // NAT threshold.
            let warn_at = self.config.nat_idle.threshold_ns() / 5 * 4;
            self.flows
                .schedule_idle_check(event.cookie, event.boot_ns + warn_at);
        }
        if !self.findings_only && !self.output_closed && self.output.event(&event).is_err() {
            self.output_closed = true;
        }
        self.publish(event.cookie);
    }

    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            match events::decode(&record) {
                Ok(event) => self.process(event),
                Err(error) => {
                    self.totals.decode_errors += 1;
                    warn!("undecodable ring-buffer record: {error}");
                }
            }
        }
        if !self.output_closed && self.output.flush().is_err() {
            self.output_closed = true;
        }
    }

    /// Warns about new losses since the last check, and ages out closed flows.
    /// Runs the idle checks that are due (one kernel map lookup per flow due).
    fn idle_checks(&mut self, now: u64, activity: &dyn ActivitySource) {
        for cookie in self.flows.take_due_idle_checks(now) {
            let Some(record) = activity.activity(cookie) else {
                continue; // closed, or never tracked by the kernel
            };
            let Some(flow) = self.flows.get_mut(cookie) else {
                continue;
            };
            flow.keepalive = Some(KeepaliveSettings::from_kernel(
                &record.keepalive,
                self.config.hz,
            ));
            let next = match idle::check(
                &record,
                now,
                &self.config.nat_idle,
                self.config.hz,
                flow.idle_reported_for,
            ) {
                Check::Later(next) | Check::Quiet(next) => next,
                Check::AtRisk {
                    idle_ns,
                    last_data_ns,
                    next,
                    ..
                } => {
                    flow.idle_reported_for = Some(last_data_ns);
                    let netns = flow.netns;
                    let finding = self.correlator.idle_at_risk(flow, netns, idle_ns, now);
                    self.found.push(finding);
                    next
                }
            };
            self.flows.schedule_idle_check(cookie, next);
        }
        self.publish(0);
    }

    pub fn housekeeping(&mut self, counters: KernelCounters, activity: &dyn ActivitySource) {
        for ((_, now, meaning), (_, before, _)) in
            counters.losses().into_iter().zip(self.reported.losses())
        {
            let new = now.saturating_sub(before);
            if let Some(meaning) = meaning
                && new > 0
            {
                warn!("{new} {meaning}");
            }
        }
        self.reported = counters;
        let now = BootClock::now_boot_ns();
        self.idle_checks(now, activity);
        self.correlator.due_tls(now, &mut self.found);
        let expired = self.flows.expire(now);
        let trim = expired.len() >= TRIM_AFTER_EXPIRED;
        for flow in expired {
            self.correlator.on_flow_end(flow, now, &mut self.found);
        }
        if trim {
            release_freed_memory();
        }
        self.publish(0);
        for line in self.aggregator.due(now) {
            self.write_finding(&line);
        }
        if !self.output_closed && self.output.flush().is_err() {
            self.output_closed = true;
        }
        self.totals.flows = self.flows.len();
        self.totals.flow_evictions = self.flows.evictions();
        self.meter(counters);
        if now.saturating_sub(self.last_stats_ns) >= self.stats_interval_ns {
            self.last_stats_ns = now;
            let totals = self.totals;
            if self
                .output
                .stats(&counters, &totals, &self.summaries)
                .is_err()
            {
                self.output_closed = true;
            }
        }
    }

    /// Hands what changed since the last call to the metrics.
    fn meter(&mut self, counters: KernelCounters) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        for ((reason, now, _), (_, then, _)) in counters
            .losses()
            .into_iter()
            .zip(self.metered.kernel.losses())
        {
            if now > then {
                metrics.lost(reason, now - then);
            }
        }
        let evictions = self.flows.evictions();
        metrics.flow_table(
            self.flows.len(),
            evictions.saturating_sub(self.metered.evictions),
        );
        let trace_bytes = self.output.trace_bytes();
        metrics.trace_bytes(trace_bytes.saturating_sub(self.metered.trace_bytes));
        metrics.heartbeat();
        self.metered = Metered {
            kernel: counters,
            evictions,
            trace_bytes,
        };
    }

    /// At shutdown: owed updates and pending aggregates go out; nothing detected is lost.
    pub fn finish(&mut self) {
        let now = BootClock::now_boot_ns();
        self.correlator.due_tls(u64::MAX, &mut self.found);
        for flow in self.flows.drain() {
            self.correlator.on_flow_end(flow, now, &mut self.found);
        }
        self.publish(0);
        for line in self.aggregator.flush() {
            self.write_finding(&line);
        }
    }
}
