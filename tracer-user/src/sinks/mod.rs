//! Output: the event stream on stdout, as readable text or NDJSON (schema in
//! `schema/shuffletrace.schema.json`). The tool's own logs go to stderr, never here.

pub mod http;
mod lines;
pub mod metrics;
pub mod trace;

use lines::*;

use std::io::{self, Write};

use crate::{
    config::Format,
    config::NatIdle,
    events::clock::BootClock,
    events::{Event, ResetReasons, Side},
    findings::Finding,
    kernel::counters::KernelCounters,
    kernel::loader::Missing,
    services::service_name,
};

use self::trace::TraceWriter;

/// Version of the line schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// What every line says about where it came from.
pub struct Context {
    pub node: String,
    pub clock: BootClock,
    pub reset_reasons: ResetReasons,
}

/// Collector totals for the stats line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub events: u64,
    /// Finding lines written, and the occurrences they stand for (sum of counts).
    pub finding_lines: u64,
    pub findings: u64,
    pub decode_errors: u64,
    pub flows: usize,
    pub flow_evictions: u64,
    /// Refusals and RSTs the kernel counted instead of sending (in the findings' counts).
    pub repeats_counted: u64,
    /// Flows that ended without their CLOSE being seen (`close_unseen` events).
    pub closes_unseen: u64,
    /// Kernel slots dropped because the kernel never reported their flow's end (see
    /// `crate::kernel::stale`).
    pub slots_expired: u64,
}

/// Writes lines to stdout (or any writer, for tests).
/// What one tracer watches, as its start line says: the network namespaces (`--netns`;
/// empty: all of the host's) and their addresses, by which `correlate` knows which node a
/// client meant to reach.
#[derive(Debug, Default)]
pub struct Scope {
    pub ports: Vec<u16>,
    pub netns: Vec<u32>,
    pub addresses: Vec<std::net::IpAddr>,
}

pub struct Output<W: Write> {
    format: Format,
    out: W,
    context: Context,
    trace: Option<TraceWriter>,
    trace_errors: u64,
    /// Text: the newest event line printed, and the flow of the late group being printed
    /// (see `event`).
    newest_event_ns: u64,
    late_flow: Option<u64>,
    /// stdout failed (the reader went away): lines still go to the trace files.
    stdout_closed: bool,
}

/// An event line this much older than the newest one printed is late: the kernel held a
/// quiet flow's events until something happened to it (`tracer_ebpf::FlowSlot`).
const LATE_NS: u64 = 100_000_000;

impl<W: Write> Output<W> {
    pub fn new(format: Format, out: W, context: Context) -> Self {
        Self {
            format,
            out,
            context,
            trace: None,
            trace_errors: 0,
            newest_event_ns: 0,
            late_flow: None,
            stdout_closed: false,
        }
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The first line of a run: what is watched and what could be attached (JSON only; in
    /// text format this goes to the log on stderr).
    pub fn start(
        &mut self,
        kernel: &str,
        attached: &[&'static str],
        missing: &[Missing],
        unavailable: &[&'static str],
        nat_idle: &NatIdle,
        scope: &Scope,
    ) -> io::Result<()> {
        let line = StartLine {
            line_type: "start",
            v: SCHEMA_VERSION,
            ts: self.context.clock.rfc3339(BootClock::now_boot_ns()),
            node: &self.context.node,
            version: env!("CARGO_PKG_VERSION"),
            kernel,
            ports: &scope.ports,
            attached,
            missing: missing
                .iter()
                .map(|m| MissingLine {
                    tracepoint: m.tracepoint,
                    reason: &m.reason,
                })
                .collect(),
            unavailable,
            nat_idle_s: nat_idle.threshold.as_secs_f64(),
            nat_idle_profile: nat_idle.profile,
            netns: &scope.netns,
            addresses: &scope.addresses,
        };
        let json = to_line(&line)?;
        self.publish(Some(json.clone()), None)?;
        if let Some(trace) = self.trace.as_mut() {
            trace.set_header(&json);
        }
        self.flush()
    }

    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        let ts = self.context.clock.rfc3339(event.boot_ns);
        let detail = detail(event, &self.context.reset_reasons);
        let json = if self.format == Format::Json || self.trace.is_some() {
            let owner = event.owner.as_ref();
            let line = EventLine {
                line_type: "event",
                v: SCHEMA_VERSION,
                event: event.kind.name(),
                ts: ts.clone(),
                node: &self.context.node,
                src: event.local.to_string(),
                dst: event.remote.to_string(),
                netns: event.netns,
                pid: owner.map(|o| o.pid),
                tid: owner.map(|o| o.tid),
                process: process_fields(owner),
                uid: owner.map(|o| o.uid),
                cgroup_id: owner.map(|o| o.cgroup_id),
                cookie: event.cookie,
                side: side_name(event.side),
                old_state: detail.old_state,
                new_state: detail.new_state,
                state: detail.state,
                error: detail.error.clone(),
                reason: detail.reason.clone(),
                soft_error: event.soft_error,
                ttl: event.ttl,
                peer_ttl: event.peer_ttl,
                class: payload(event).map(|(class, _)| class),
                direction: payload(event).map(|(_, direction)| direction),
                pod: pod_fields(event.pod.as_deref()),
                isn: event.isn.into(),
            };
            Some(to_line(&line)?)
        } else {
            None
        };
        let text = if self.format == Format::Text {
            let mut line = format!(
                "{ts} {:<17} {} -> {}",
                event.kind.name(),
                event.local,
                event.remote
            );
            match (detail.old_state, detail.new_state, detail.state) {
                (Some(old), Some(new), _) => line.push_str(&format!(" {old} -> {new}")),
                (_, _, Some(state)) => line.push_str(&format!(" in {state}")),
                _ => {}
            }
            if let Some(error) = &detail.error {
                line.push_str(&format!(" error={error}"));
            }
            if let Some(reason) = &detail.reason {
                line.push_str(&format!(" reason={reason}"));
            }
            if let Some((class, direction)) = payload(event) {
                line.push_str(&format!(" {direction} {class}"));
            }
            line.push(' ');
            line.push_str(&owner_text(event.owner.as_ref()));
            if let Some(side) = side_name(event.side) {
                line.push_str(&format!(" side={side}"));
            }
            line.push_str(&pod_text(event.pod.as_deref()));
            line.push_str(&format!(" netns={} cookie={}\n", event.netns, event.cookie));
            Some(self.in_time_order(event, line))
        } else {
            None
        };
        self.publish(json, text)
    }

    /// Text lines go out as events arrive, and a quiet flow's events arrive together when
    /// something happens to it, after later lines of other flows: such a group is announced,
    /// so that a reader does not take the log's order for the order of events.
    fn in_time_order(&mut self, event: &Event, line: String) -> String {
        if event.boot_ns + LATE_NS >= self.newest_event_ns {
            self.newest_event_ns = self.newest_event_ns.max(event.boot_ns);
            self.late_flow = None;
            return line;
        }
        if self.late_flow == Some(event.cookie) {
            return line;
        }
        self.late_flow = Some(event.cookie);
        format!(
            "  (earlier events of {} -> {}, held by the kernel while the flow was quiet:)\n{line}",
            event.local, event.remote
        )
    }

    fn evidence_line(&self, event: &Event) -> EvidenceLine {
        let detail = detail(event, &self.context.reset_reasons);
        EvidenceLine {
            ts: self.context.clock.rfc3339(event.boot_ns),
            event: event.kind.name(),
            src: event.local.to_string(),
            dst: event.remote.to_string(),
            old_state: detail.old_state,
            new_state: detail.new_state,
            state: detail.state,
            error: detail.error,
            reason: detail.reason,
            ttl: event.ttl,
            peer_ttl: event.peer_ttl,
            class: payload(event).map(|(class, _)| class),
            direction: payload(event).map(|(_, direction)| direction),
            isn: event.isn.into(),
        }
    }

    /// A finding: one JSON line, or a block that stands out from the event lines in text.
    pub fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        let clock = self.context.clock;
        // The service is named after the server's end.
        let service_port = match finding.side {
            Some(Side::Server) => finding.src.port(),
            _ => finding.dst.port(),
        };
        let service = service_name(service_port);
        let json = if self.format == Format::Json || self.trace.is_some() {
            let owner = finding.owner.as_ref();
            let line =
                FindingLine {
                    line_type: "finding",
                    v: SCHEMA_VERSION,
                    id: finding.id,
                    kind: finding.kind.name(),
                    severity: finding.severity.name(),
                    ts: clock.rfc3339(finding.boot_ns),
                    node: &self.context.node,
                    src: finding.src.to_string(),
                    dst: finding.dst.to_string(),
                    service,
                    netns: finding.netns,
                    pid: owner.map(|o| o.pid),
                    process: process_fields(owner),
                    uid: owner.map(|o| o.uid),
                    side: side_name(finding.side),
                    summary: &finding.summary,
                    evidence: finding
                        .evidence
                        .iter()
                        .map(|e| self.evidence_line(e))
                        .collect(),
                    remedy: &finding.remedy,
                    count: finding.count,
                    first_ts: clock.rfc3339(finding.first_ns),
                    last_ts: clock.rfc3339(finding.last_ns),
                    update_of: finding.update_of,
                    idle_s: finding
                        .idle
                        .as_ref()
                        .map(|i| (i.idle_s * 10.0).round() / 10.0),
                    threshold_s: finding.idle.as_ref().map(|i| i.threshold_s),
                    keepalive: finding.idle.as_ref().and_then(|i| i.keepalive).map(|k| {
                        KeepaliveLine {
                            enabled: k.enabled,
                            idle_s: k.idle_s,
                            interval_s: k.interval_s,
                            probes: k.probes,
                        }
                    }),
                    direction: finding.tls.as_ref().map(|t| t.direction),
                    sidecar: finding.tls.as_ref().map(|t| t.sidecar),
                    sent: finding.tls.as_ref().map(|t| t.sent),
                    answer: finding.tls.as_ref().map(|t| t.answer.as_str()),
                    confidence: finding.tls.as_ref().map(|t| t.confidence.name()),
                    basis: finding.tls.as_ref().map(|t| t.basis.as_str()),
                    intercepted: finding
                        .tls
                        .as_ref()
                        .and_then(|t| t.intercepted.as_ref())
                        .map(|app| InterceptedLine {
                            src: app.src.to_string(),
                            dst: app.dst.to_string(),
                            pid: app.owner.as_ref().map(|o| o.pid),
                            process: process_fields(app.owner.as_ref()),
                            uid: app.owner.as_ref().map(|o| o.uid),
                            outcome: app.outcome,
                        }),
                    pod: pod_fields(finding.pod.as_deref()),
                    peer: finding.peer.as_ref().map(|peer| PeerLine {
                        addr: peer.addr.to_string(),
                        netns: peer.netns,
                        side: side_name(peer.side),
                        pid: peer.owner.as_ref().map(|o| o.pid),
                        process: process_fields(peer.owner.as_ref()),
                        uid: peer.owner.as_ref().map(|o| o.uid),
                        pod: pod_fields(peer.pod.as_deref()),
                    }),
                    isn: finding.isn().into(),
                };
            Some(to_line(&line)?)
        } else {
            None
        };
        let text = if self.format == Format::Text {
            let who = owner_text(finding.owner.as_ref());
            let service = service.map(|s| format!(" ({s})")).unwrap_or_default();
            let update = match finding.update_of {
                Some(id) => format!(" update of #{id}"),
                None => String::new(),
            };
            let who = format!("{who}{}", pod_text(finding.pod.as_deref()));
            let mut block = format!(
                "\n>>> FINDING #{} {} {}{update}: {} -> {}{service} {who} netns={} count={}\n",
                finding.id,
                finding.severity.name().to_uppercase(),
                finding.kind.name(),
                finding.src,
                finding.dst,
                finding.netns,
                finding.count,
            );
            block.push_str(&format!("    what:     {}\n", finding.summary));
            if let Some(tls) = &finding.tls {
                block.push_str(&format!(
                    "    tls:      {} sent={} answer=\"{}\" confidence={} basis=\"{}\"\n",
                    tls.direction,
                    tls.sent,
                    tls.answer,
                    tls.confidence.name(),
                    tls.basis
                ));
            }
            for event in &finding.evidence {
                let d = detail(event, &self.context.reset_reasons);
                let mut text = format!(
                    "    evidence: {} {}",
                    clock.rfc3339(event.boot_ns),
                    event.kind.name()
                );
                match (d.old_state, d.new_state, d.state) {
                    (Some(old), Some(new), _) => text.push_str(&format!(" {old} -> {new}")),
                    (_, _, Some(state)) => text.push_str(&format!(" in {state}")),
                    _ => {}
                }
                for (key, value) in [("error", d.error), ("reason", d.reason)] {
                    if let Some(value) = value {
                        text.push_str(&format!(" {key}={value}"));
                    }
                }
                if let Some(ttl) = event.ttl {
                    text.push_str(&format!(" ttl={ttl}"));
                }
                if let Some(ttl) = event.peer_ttl {
                    text.push_str(&format!(" peer_ttl={ttl}"));
                }
                if let Some((class, direction)) = payload(event) {
                    text.push_str(&format!(" {direction} {class}"));
                }
                if (event.local, event.remote) != (finding.src, finding.dst) {
                    // The other end's, in a joined finding.
                    text.push_str(&format!(" at {} -> {}", event.local, event.remote));
                }
                block.push_str(&text);
                block.push('\n');
            }
            if let Some(peer) = &finding.peer {
                block.push_str(&format!(
                    "    peer:     {}{} {}{} netns={}\n",
                    peer.addr,
                    side_name(peer.side)
                        .map(|side| format!(" ({side})"))
                        .unwrap_or_default(),
                    owner_text(peer.owner.as_ref()),
                    pod_text(peer.pod.as_deref()),
                    peer.netns
                ));
            }
            block.push_str(&format!("    fix:      {}\n\n", finding.remedy));
            Some(block)
        } else {
            None
        };
        self.publish(json, text)
    }

    /// Loss and size counters (JSON: a `stats` line; text: nothing, the log has them).
    pub fn stats(
        &mut self,
        kernel: &KernelCounters,
        totals: &Totals,
        summaries: &crate::flows::summaries::FlowSummaries,
    ) -> io::Result<()> {
        let (trace_bytes, trace_files_deleted) = self
            .trace
            .as_ref()
            .map_or((0, 0), |t| (t.bytes_written(), t.files_deleted()));
        let line = StatsLine {
            line_type: "stats",
            v: SCHEMA_VERSION,
            ts: self.context.clock.rfc3339(BootClock::now_boot_ns()),
            node: &self.context.node,
            events: totals.events,
            findings: totals.findings,
            finding_lines: totals.finding_lines,
            decode_errors: totals.decode_errors,
            lost_events: kernel.ringbuf_full,
            owner_table_full: kernel.owner_table_full,
            listener_table_full: kernel.listener_table_full,
            read_failed: kernel.read_failed,
            activity_table_full: kernel.activity_table_full,
            repeat_table_full: kernel.repeat_table_full,
            recursion_misses: kernel.recursion_misses,
            flows: totals.flows,
            flow_evictions: totals.flow_evictions,
            trace_bytes,
            trace_files_deleted,
            trace_write_errors: self.trace_errors,
            clean_flows: summaries.total(),
            clean_flows_unattributed: summaries.unattributed(),
            clean_flows_by_port: summaries.rows(),
            repeats_counted: totals.repeats_counted,
            closes_unseen: totals.closes_unseen,
            slots_expired: totals.slots_expired,
        };
        let json = to_line(&line)?;
        let text = (self.format == Format::Text).then(|| {
            format!(
                "--- stats {}: {} events, {} findings in {} lines; lost: {} events (ring buffer \
                 full), {} program runs skipped (recursion; {} flows ended with their close \
                 unseen), {} flows whose end the kernel never reported, {} undecodable, {} trace \
                 write errors; {} flows tracked, {} evicted; {} clean flows summarised\n",
                line.ts,
                line.events,
                line.findings,
                line.finding_lines,
                line.lost_events,
                line.recursion_misses,
                line.closes_unseen,
                line.slots_expired,
                line.decode_errors,
                line.trace_write_errors,
                line.flows,
                line.flow_evictions,
                line.clean_flows,
            )
        });
        self.publish(Some(json), text)
    }

    /// Writes a line: JSON to the trace files and, in JSON format, to stdout; text to stdout
    /// in text format. A failing trace file is counted and warned about, never fatal. A
    /// failing stdout is returned once (the caller stops); the trace files still get every
    /// line after it, up to the final stats.
    fn publish(&mut self, json: Option<Vec<u8>>, text: Option<String>) -> io::Result<()> {
        if let (Some(trace), Some(json)) = (self.trace.as_mut(), json.as_ref())
            && let Err(error) = trace.write_line(json)
        {
            if self.trace_errors == 0 {
                tracing::warn!("cannot write the trace file: {error} (counted; tracing goes on)");
            }
            self.trace_errors += 1;
        }
        if self.stdout_closed {
            return Ok(());
        }
        let written = match (self.format, json, text) {
            (Format::Json, Some(json), _) => self.out.write_all(&json),
            (Format::Text, _, Some(text)) => self.out.write_all(text.as_bytes()),
            _ => Ok(()),
        };
        self.stdout_closed = written.is_err();
        written
    }

    /// Trace write errors so far (counted, never fatal).
    pub fn trace_errors(&self) -> u64 {
        self.trace_errors
    }

    /// Sends subsequent lines to trace files as well.
    pub fn set_trace(&mut self, trace: TraceWriter) {
        self.trace = Some(trace);
    }

    pub fn trace_bytes(&self) -> u64 {
        self.trace.as_ref().map_or(0, TraceWriter::bytes_written)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(trace) = self.trace.as_mut()
            && let Err(error) = trace.flush()
        {
            self.trace_errors += 1;
            tracing::warn!("cannot flush the trace file: {error}");
        }
        if self.stdout_closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.stdout_closed = flushed.is_err();
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::events::Owner;

    fn output(format: Format) -> Output<Vec<u8>> {
        Output::new(
            format,
            Vec::new(),
            Context {
                node: "node-1".into(),
                clock: BootClock::with_boot_epoch_ns(1_795_000_000_000_000_000),
                reset_reasons: ResetReasons::new(vec![(1, "NO_SOCKET".into())]),
            },
        )
    }

    fn refused() -> Event {
        Event {
            netns: 4026531840,
            remote: "[fd00::2]:7337".parse().unwrap(),
            owner: Some(Owner {
                pid: 10,
                tid: 11,
                uid: 1000,
                comm: "java".into(),
                cgroup_id: 3,
                process: None,
            }),
            side: Some(Side::Client),
            old_state: 7,
            new_state: 7,
            detail: libc::ECONNREFUSED,
            ..crate::events::sample_event(EventKind::SocketError, 77, 5)
        }
    }

    #[test]
    fn json_event_line() {
        let mut out = output(Format::Json);
        out.event(&refused()).unwrap();
        let text = String::from_utf8(out.out).unwrap();
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(value["type"], "event");
        assert_eq!(value["event"], "socket_error");
        assert_eq!(value["error"], "ECONNREFUSED");
        assert_eq!(value["dst"], "[fd00::2]:7337");
        assert_eq!(value["src"], "10.0.0.1:40000");
        assert_eq!(value["ts"], "2026-11-18T11:06:40.000000005Z");
        assert_eq!(value["comm"], "java");
        assert_eq!(value["side"], "client");
        assert!(text.ends_with('\n') && text.lines().count() == 1);
    }

    #[test]
    fn reset_reason_named_from_kernel_enum() {
        let mut out = output(Format::Json);
        let mut event = refused();
        event.kind = EventKind::ResetSent;
        event.detail = 1;
        event.owner = None;
        out.event(&event).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out.out).unwrap();
        assert_eq!(value["reason"], "NO_SOCKET");
        assert!(value["pid"].is_null());
    }

    #[test]
    fn text_line_is_readable() {
        let mut out = output(Format::Text);
        let mut event = refused();
        event.kind = EventKind::StateChange;
        event.old_state = 2;
        event.new_state = 7;
        out.event(&event).unwrap();
        let text = String::from_utf8(out.out).unwrap();
        assert!(text.contains("state_change"), "{text}");
        assert!(
            text.contains("10.0.0.1:40000 -> [fd00::2]:7337 SYN_SENT -> CLOSE"),
            "{text}"
        );
        assert!(text.contains("pid=10 comm=java uid=1000"), "{text}");
    }

    #[test]
    fn a_quiet_flows_late_events_are_announced_once_in_text() {
        let mut out = output(Format::Text);
        let mut event = refused();
        event.kind = EventKind::StateChange;
        event.boot_ns = 10_000_000_000;
        out.event(&event).unwrap();
        // Another flow's events, recorded seconds earlier, sent when it stopped being quiet.
        let mut late = event.clone();
        late.cookie = 99;
        for at in [2_000_000_000, 2_000_100_000] {
            late.boot_ns = at;
            out.event(&late).unwrap();
        }
        event.boot_ns = 10_500_000_000;
        out.event(&event).unwrap();
        let text = String::from_utf8(out.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].contains("earlier events of"), "{text}");
        assert!(!lines[4].contains("earlier"), "{text}");
        assert_eq!(text.matches("earlier events").count(), 1, "{text}");
    }

    #[test]
    fn owners_show_the_process_its_main_class_and_the_thread() {
        let mut out = output(Format::Json);
        let mut event = refused();
        if let Some(owner) = event.owner.as_mut() {
            owner.comm = "shuffle-client-".into();
            owner.process = Some(std::sync::Arc::new(crate::events::procs::ProcessName {
                name: "java".into(),
                main_class: Some("org.apache.spark.executor.CoarseGrainedExecutorBackend".into()),
            }));
        }
        out.event(&event).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out.out).unwrap();
        assert_eq!(value["comm"], "java");
        assert_eq!(value["thread"], "shuffle-client-");
        assert_eq!(
            value["main_class"],
            "org.apache.spark.executor.CoarseGrainedExecutorBackend"
        );
    }
}
