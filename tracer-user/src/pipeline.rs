//! The collector: decoded events through the flow table and the correlator to the output.

use std::{collections::HashMap, io::Write};

use aya::maps::{MapData, RingBuf};
use tracer_ebpf::FlowActivity;
use tracing::warn;

use crate::{
    config::Thresholds,
    events::clock::BootClock,
    events::keepalive::KeepaliveSettings,
    events::procs::ProcessNames,
    events::repeats::Repeats,
    events::sources::{ActivitySource, RepeatSource, SlotSource},
    events::{self, Event, EventKind, KernelFacts},
    findings::idle::{self, Check},
    findings::{Aggregator, Correlator, Finding, Flow, FlowTable, Joiner},
    flows::summaries::FlowSummaries,
    kernel::counters::KernelCounters,
    kernel::flowkey::FlowKeys,
    sinks::metrics::Metrics,
    sinks::{Output, Totals},
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

/// Events put in time order at once (bounded memory however full the ring buffer is).
const DRAIN_BATCH: usize = 4096;

/// Flows expired in one housekeeping pass above which freed memory is handed back.
const TRIM_AFTER_EXPIRED: usize = 10_000;

/// The userspace half of the data path (events -> flows -> findings -> sinks), and its
/// counts.
pub struct Pipeline<W: Write> {
    /// The kernel's tick rate (keepalive settings are in jiffies): a fact, read at start.
    hz: u32,
    config: Thresholds,
    pub output: Output<W>,
    pub flows: FlowTable,
    /// Clean quiet flows, counted (the kernel sends one summary record each).
    pub summaries: FlowSummaries,
    pub correlator: Correlator,
    /// Joins the two ends' findings of one incident when both are on this host.
    pub joiner: Joiner,
    pub aggregator: Aggregator,
    pub findings_only: bool,
    /// `--clean-flows`: clean flows' summaries are printed, not only counted.
    pub clean_flows: bool,
    pub totals: Totals,
    pub reported: KernelCounters,
    /// Set when stdout is gone (a closed pipe): stop cleanly.
    pub output_closed: bool,
    /// Scratch buffer for the findings of one event.
    found: Vec<Finding>,
    /// Scratch buffer of `drain`'s batch, kept between drains (at most `DRAIN_BATCH` events
    /// plus one record's): growing a new one for every drain was a tenth of the collector's
    /// time under connection churn.
    batch: Vec<Event>,
    /// Scratch of the batch's time order (see `events::batch`), kept between drains.
    order: Vec<(u64, u32)>,
    /// When set, every finding line is also kept here (`shuffletrace probe` reads them).
    captured: Option<Vec<Finding>>,
    pub metrics: Option<Metrics>,
    /// Kubernetes pod attribution (`--host-root`).
    pub attributor: Option<crate::events::k8s::Attributor>,
    /// Names owners' processes from /proc (the kernel knows their threads).
    pub process_names: ProcessNames,
    /// Period of `stats` lines, and when the last one was written.
    pub stats_interval_ns: u64,
    /// How the kernel's flow keys are shown (see `crate::kernel::flowkey`).
    pub flow_keys: FlowKeys,
    last_stats_ns: u64,
    /// Cookie -> last-data time of the idle period reported for it, and the keepalive the
    /// kernel had then (bounded by the kernel's activity table: entries of flows gone from it
    /// are dropped at each scan).
    idle_reported: HashMap<u64, (u64, KeepaliveSettings)>,
    /// Entries that left `idle_reported` at the last scan (their flow closed): the events of
    /// its close may still be in the ring buffer, and its break needs the keepalive.
    idle_gone: HashMap<u64, (u64, KeepaliveSettings)>,
    /// When the kernel's activity table is scanned next.
    next_idle_scan_ns: u64,
    /// Counts already given to the metrics (they take deltas).
    metered: Metered,
    /// What was reported of the kernel's counted repeats.
    pub repeats: Repeats,
    /// The sweep of kernel slots whose end was never reported: age and period (see
    /// `crate::kernel::stale`), and when it runs next.
    slot_policy: (std::time::Duration, std::time::Duration),
    next_slot_sweep_ns: u64,
}

#[derive(Default)]
struct Metered {
    kernel: KernelCounters,
    evictions: u64,
    trace_bytes: u64,
    trace_errors: u64,
    slots_expired: u64,
}

impl<W: Write> Pipeline<W> {
    pub fn new(
        output: Output<W>,
        config: Thresholds,
        facts: KernelFacts,
        max_flows: usize,
    ) -> Self {
        let slot_policy = crate::kernel::stale::policy();
        Self {
            config,
            hz: facts.hz,
            output,
            flows: FlowTable::new(max_flows),
            summaries: FlowSummaries::default(),
            correlator: Correlator::new(config, facts.reasons),
            joiner: Joiner::default(),
            aggregator: Aggregator::new(config.aggregate_window_ns, max_flows),
            findings_only: false,
            clean_flows: false,
            totals: Totals::default(),
            reported: KernelCounters::default(),
            output_closed: false,
            found: Vec::new(),
            batch: Vec::new(),
            order: Vec::new(),
            captured: None,
            metrics: None,
            attributor: None,
            process_names: ProcessNames::new(std::path::Path::new("/")),
            stats_interval_ns: 60_000_000_000,
            flow_keys: FlowKeys::COOKIES,
            last_stats_ns: BootClock::now_boot_ns(),
            slot_policy,
            next_slot_sweep_ns: BootClock::now_boot_ns() + slot_policy.1.as_nanos() as u64,
            metered: Metered::default(),
            idle_reported: HashMap::new(),
            idle_gone: HashMap::new(),
            next_idle_scan_ns: 0,
            repeats: Repeats::new(config.aggregate_window_ns),
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
            metrics.finding(finding.kind.name(), finding.service_port(), finding.count);
        }
        if self.output.finding(finding).is_err() {
            self.output_closed = true;
        }
    }

    /// Joins, aggregates and prints the findings in `self.found`.
    fn publish(&mut self, cookie: u64) {
        let mut joined = Vec::new();
        for finding in std::mem::take(&mut self.found) {
            self.joiner.offer(finding, &mut joined);
        }
        self.aggregate(cookie, joined);
    }

    /// Publishes the findings the join stage held past their moment.
    fn publish_held(&mut self, now_ns: u64) {
        let mut due = Vec::new();
        self.joiner.due(now_ns, &mut due);
        self.aggregate(0, due);
    }

    /// Aggregates and prints findings.
    fn aggregate(&mut self, cookie: u64, found: Vec<Finding>) {
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

    /// Names the event's owner process by its pid (cached): before the flow keeps the owner,
    /// so that the flow's later events without one get it named.
    fn name_owner(&mut self, event: &mut Event) {
        if let Some(owner) = event.owner.as_mut() {
            self.process_names.name(owner, event.boot_ns);
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
        self.name_owner(&mut event);
        if event.kind == EventKind::CloseUnseen {
            self.totals.closes_unseen += 1;
            if event.was_quiet {
                // Nothing of it was sent before: printed like a summary (with --clean-flows)
                // but not counted as clean, since how it closed is not known.
                if self.clean_flows && self.output.event(&event).is_err() {
                    self.output_closed = true;
                }
                return;
            }
            // A flow whose events were sent: it ends in the flow table below.
        }
        if event.kind == EventKind::FlowSummary {
            // A clean flow the kernel never reported otherwise: counted, and remembered only
            // for linking a sidecar's finding to the connection it intercepted.
            self.summaries.add(&event);
            self.correlator.note_summary(&event);
            if let Some(metrics) = &self.metrics {
                let (port, side) = crate::flows::summaries::port_and_side(&event);
                metrics.clean_flow(port, side);
            }
            // Asked for by name: printed with --findings-only too (the DaemonSet's mode).
            if self.clean_flows && self.output.event(&event).is_err() {
                self.output_closed = true;
            }
            return;
        }
        let reported_idle = self
            .idle_reported
            .get(&event.cookie)
            .or_else(|| self.idle_gone.get(&event.cookie))
            .map(|(_, k)| *k);
        if let Some(flow) = self.flows.observe(&mut event)
            && flow.keepalive.is_none()
        {
            // A quiet flow warned about as idle: the keepalive its warning showed.
            flow.keepalive = reported_idle;
        }
        self.attribute(&mut event);
        let flow = self.flows.get_mut(event.cookie);
        self.correlator.on_event(&event, flow, &mut self.found);
        if !self.findings_only && self.output.event(&event).is_err() {
            self.output_closed = true;
        }
        self.publish(event.cookie);
    }

    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // What the ring holds now, in time order: a quiet flow's recorded events come with
        // the record that ended its quiet, after records of other flows that are later. The
        // batch is bounded by the ring's size; a flow's own events stay in their order.
        let mut batch = std::mem::take(&mut self.batch);
        loop {
            let more = match ring.next() {
                Some(record) => {
                    if let Err(error) = events::decode_into(&record, &mut batch) {
                        self.totals.decode_errors += 1;
                        warn!("undecodable ring-buffer record: {error}");
                    }
                    true
                }
                None => false,
            };
            if batch.len() >= DRAIN_BATCH || (!more && !batch.is_empty()) {
                events::batch::sort_by_time(&mut batch, &mut self.order);
                for mut event in batch.drain(..) {
                    event.cookie = self.flow_keys.shown(event.cookie);
                    self.process(event);
                }
            }
            if !more {
                break;
            }
        }
        self.batch = batch;
        // A sidecar's tls_mismatch settles within the join window (see `findings::join`).
        let now = BootClock::now_boot_ns();
        self.correlator.due_tls(now, &mut self.found);
        self.publish(0);
        self.publish_held(now);
        if self.output.flush().is_err() {
            self.output_closed = true;
        }
    }

    /// Every tenth of the NAT threshold: scans the kernel's activity table and reports each
    /// flow idle past 80% of it without keepalive that would save it, once per idle period.
    /// Flows the kernel kept quiet are described from its tables (tuple, owner, recorded
    /// state changes); nothing is kept per flow but the reported idle periods. The open
    /// flows' first payloads also tell the correlator which servers speak TLS.
    fn idle_scan(&mut self, now: u64, source: &dyn ActivitySource) {
        if now < self.next_idle_scan_ns {
            return;
        }
        // A tenth early: housekeeping ticks at the scan interval, and a tick that comes a
        // moment before the due time must not put the scan off by a whole interval (which
        // would let a flow pass 90% of the threshold unreported).
        let interval = idle::scan_interval_ns(&self.config.nat_idle);
        self.next_idle_scan_ns = now + interval - interval / 10;
        let (nat, hz) = (self.config.nat_idle, self.hz);
        let reported = &self.idle_reported;
        let correlator = &mut self.correlator;
        let mut still_reported = HashMap::new();
        let mut at_risk = Vec::new();
        source.scan(&mut |cookie, activity| {
            correlator.note_activity(activity, now);
            let reported_for = reported.get(&cookie).copied();
            if let Some(entry) = reported_for {
                still_reported.insert(cookie, entry);
            }
            let reported_for = reported_for.map(|(last_data_ns, _)| last_data_ns);
            if let Check::AtRisk {
                idle_ns,
                last_data_ns,
                ..
            } = idle::check(activity, now, &nat, hz, reported_for)
            {
                at_risk.push((cookie, *activity, idle_ns, last_data_ns));
            }
        });
        // Flows gone from the kernel's table are forgotten after one more scan: the map stays
        // bounded by twice the table.
        let mut gone = std::mem::replace(&mut self.idle_reported, still_reported);
        gone.retain(|cookie, _| !self.idle_reported.contains_key(cookie));
        self.idle_gone = gone;
        for (cookie, activity, idle_ns, last_data_ns) in at_risk {
            let keepalive = KeepaliveSettings::from_kernel(&activity.keepalive, hz);
            self.idle_reported.insert(cookie, (last_data_ns, keepalive));
            // A flow that already broke after an idle period has its verdict: its
            // retransmissions' growing gaps are not a new idle period to warn about.
            if self
                .flows
                .get_mut(cookie)
                .is_some_and(|flow| flow.track.idle_break_reported)
            {
                continue;
            }
            let finding = match self.flows.get_mut(cookie) {
                Some(flow) => {
                    flow.keepalive = Some(keepalive);
                    if flow.netns == 0 {
                        flow.netns = activity.netns;
                    }
                    let netns = flow.netns;
                    self.correlator.idle_at_risk(flow, netns, idle_ns, now)
                }
                None => {
                    // Unreadable (an address family it does not know): nothing to report.
                    let Some(mut flow) = self.quiet_flow(cookie, &activity, source) else {
                        continue;
                    };
                    flow.keepalive = Some(keepalive);
                    self.correlator
                        .idle_at_risk(&flow, activity.netns, idle_ns, now)
                }
            };
            self.found.push(finding);
        }
        self.publish(0);
    }

    /// A flow the kernel kept quiet, rebuilt from its tables (not added to the flow table:
    /// the kernel keeps tracking it), with the recorded events as evidence.
    fn quiet_flow(
        &mut self,
        cookie: u64,
        activity: &FlowActivity,
        source: &dyn ActivitySource,
    ) -> Option<Flow> {
        let slot = source.slot(cookie);
        let history = events::quiet_history(cookie, activity, slot.as_ref());
        let mut scratch = FlowTable::new(1);
        let mut pod = None;
        let recorded = events::expand_history(&history).unwrap_or_default();
        // Without a slot (a flow opened before tracing started) the opening is unknown.
        let skip = usize::from(slot.is_none() && recorded.len() > 1);
        for mut event in recorded.into_iter().skip(skip) {
            self.name_owner(&mut event);
            if pod.is_none() {
                self.attribute(&mut event);
                pod = Some(event.pod.clone());
            }
            if let Some(flow) = scratch.observe(&mut event) {
                flow.track.remember(&event);
            }
        }
        let mut flow = scratch.drain().pop()?;
        flow.netns = activity.netns;
        flow.pod = pod;
        Some(flow)
    }

    /// Reads what the kernel counted instead of sending (see `repeats`): each key's new
    /// occurrences become one finding with that count, built from the latest occurrence as
    /// the kernel would have sent it, and join the aggregate of the finding sent in full.
    pub fn report_repeats(&mut self, now: u64, source: &mut dyn RepeatSource) {
        for repeated in self.repeats.harvest(now, source) {
            let Ok(mut event) = events::repeat_event(&repeated.key, &repeated.count) else {
                self.totals.decode_errors += 1;
                continue;
            };
            self.name_owner(&mut event);
            self.attribute(&mut event);
            // Its own flow: a refused connect's verdict needs one, and must not meet others.
            let mut scratch = FlowTable::new(1);
            let flow = scratch.observe(&mut event);
            let mut found = Vec::new();
            self.correlator.on_event(&event, flow, &mut found);
            for mut finding in found {
                finding.count = repeated.new;
                finding.first_ns = repeated.first_ns;
                if let Some(metrics) = &self.metrics {
                    metrics.repeats(finding.kind.name(), finding.service_port(), repeated.new);
                }
                self.found.push(finding);
            }
        }
        self.totals.repeats_counted = self.repeats.total();
        self.publish(0);
    }

    /// Loss counters, the sweep of stale kernel slots (when due), idle scan, counted repeats,
    /// owed updates, aged-out flows, closed aggregation windows, metrics and the periodic
    /// stats line.
    pub fn housekeeping<K: ActivitySource + RepeatSource + SlotSource>(
        &mut self,
        counters: KernelCounters,
        kernel: &mut K,
    ) {
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
        let (max_age, every) = self.slot_policy;
        self.totals.slots_expired += kernel.collect_expired(now, max_age);
        if now >= self.next_slot_sweep_ns {
            self.totals.slots_expired += kernel.expire_slots(now, max_age);
            self.next_slot_sweep_ns = now + every.as_nanos() as u64;
        }
        self.idle_scan(now, &*kernel);
        // Before the aggregation windows close: what the kernel counted within a window
        // joins that window's line.
        self.report_repeats(now, kernel);
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
        self.publish_held(now);
        for line in self.aggregator.due(now) {
            self.write_finding(&line);
        }
        if self.output.flush().is_err() {
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
        // Every loss series is served from the first call, at 0 until something is lost: a
        // dashboard or alert then tells "nothing lost" from "not scraped" (Prometheus's advice
        // for labels with known values), and the series bound stays the README's 8.
        for ((reason, now, _), (_, then, _)) in counters
            .losses()
            .into_iter()
            .zip(self.metered.kernel.losses())
        {
            if !KernelCounters::NOTHING_LOST.contains(&reason) {
                metrics.lost(reason, now.saturating_sub(then));
            }
        }
        let evictions = self.flows.evictions();
        metrics.flow_table(
            self.flows.len(),
            evictions.saturating_sub(self.metered.evictions),
        );
        let trace_bytes = self.output.trace_bytes();
        metrics.trace_bytes(trace_bytes.saturating_sub(self.metered.trace_bytes));
        // Lines the trace files did not get (stdout and the metrics did).
        let trace_errors = self.output.trace_errors();
        metrics.lost(
            "trace_write_error",
            trace_errors.saturating_sub(self.metered.trace_errors),
        );
        // Flows whose end the kernel never reported (see `crate::kernel::stale`).
        let slots_expired = self.totals.slots_expired;
        metrics.lost(
            "slot_expired",
            slots_expired.saturating_sub(self.metered.slots_expired),
        );
        metrics.heartbeat();
        self.metered = Metered {
            kernel: counters,
            evictions,
            trace_bytes,
            trace_errors,
            slots_expired,
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
        let mut held = Vec::new();
        self.joiner.flush(&mut held);
        self.aggregate(0, held);
        for line in self.aggregator.flush() {
            self.write_finding(&line);
        }
    }
}
