//! Output: the event stream on stdout, as readable text or NDJSON (schema in
//! `schema/shuffletrace.schema.json`). The tool's own logs go to stderr, never here.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    cli::Format,
    clock::BootClock,
    events::{
        Event, EventKind, ResetReasons, Side, errno_name, payload_class_name, tcp_state_name,
    },
    findings::Finding,
    idle::NatIdle,
    k8s::PodRef,
    probes::{KernelCounters, Missing},
    remedies::service_name,
    trace::TraceWriter,
};

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
}

#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    event: &'static str,
    ts: String,
    node: &'a str,
    src: String,
    dst: String,
    netns: u32,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<&'a str>,
    uid: Option<u32>,
    cgroup_id: Option<u64>,
    cookie: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    soft_error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(flatten)]
    pod: PodFields<'a>,
}

/// `pod`, `namespace`, `container` of a flow in a Kubernetes pod (absent otherwise).
#[derive(Serialize, Default)]
struct PodFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
}

fn pod_fields(pod: Option<&PodRef>) -> PodFields<'_> {
    match pod {
        Some(pod) => PodFields {
            pod: Some(&pod.pod),
            namespace: Some(&pod.namespace),
            container: pod.container.as_deref(),
        },
        None => PodFields::default(),
    }
}

fn pod_text(pod: Option<&PodRef>) -> String {
    match pod {
        Some(p) => match &p.container {
            Some(c) => format!(" pod={}/{} container={c}", p.namespace, p.pod),
            None => format!(" pod={}/{}", p.namespace, p.pod),
        },
        None => String::new(),
    }
}

#[derive(Serialize)]
struct MissingLine<'a> {
    tracepoint: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct StartLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    ts: String,
    node: &'a str,
    version: &'static str,
    kernel: &'a str,
    ports: &'a [u16],
    attached: &'a [&'static str],
    missing: Vec<MissingLine<'a>>,
    unavailable: Vec<&'static str>,
    nat_idle_s: f64,
    nat_idle_profile: &'static str,
}

#[derive(Serialize)]
struct StatsLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    ts: String,
    node: &'a str,
    events: u64,
    findings: u64,
    finding_lines: u64,
    decode_errors: u64,
    lost_events: u64,
    owner_table_full: u64,
    listener_table_full: u64,
    read_failed: u64,
    activity_table_full: u64,
    repeat_table_full: u64,
    recursion_misses: u64,
    flows: usize,
    flow_evictions: u64,
    trace_bytes: u64,
    trace_files_deleted: u64,
    trace_write_errors: u64,
    clean_flows: u64,
    clean_flows_unattributed: u64,
    clean_flows_by_port: Vec<crate::summaries::PortSummary>,
    repeats_counted: u64,
}

#[derive(Serialize)]
struct EvidenceLine {
    ts: String,
    event: &'static str,
    src: String,
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
}

#[derive(Serialize)]
struct FindingLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    id: u64,
    kind: &'static str,
    severity: &'static str,
    ts: String,
    node: &'a str,
    src: String,
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'static str>,
    netns: u32,
    pid: Option<u32>,
    comm: Option<&'a str>,
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    summary: &'a str,
    evidence: Vec<EvidenceLine>,
    remedy: &'a str,
    count: u64,
    first_ts: String,
    last_ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_of: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<KeepaliveLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sidecar: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intercepted: Option<InterceptedLine<'a>>,
    #[serde(flatten)]
    pod: PodFields<'a>,
}

#[derive(Serialize)]
struct InterceptedLine<'a> {
    src: String,
    dst: String,
    pid: Option<u32>,
    comm: Option<&'a str>,
    uid: Option<u32>,
    outcome: &'static str,
}

#[derive(Serialize)]
struct KeepaliveLine {
    enabled: bool,
    idle_s: f64,
    interval_s: f64,
    probes: u32,
}

/// The parts of an event line that depend on its kind.
struct Detail {
    old_state: Option<&'static str>,
    new_state: Option<&'static str>,
    state: Option<&'static str>,
    error: Option<String>,
    reason: Option<String>,
}

fn detail(event: &Event, reasons: &ResetReasons) -> Detail {
    let mut detail = Detail {
        old_state: None,
        new_state: None,
        state: None,
        error: None,
        reason: None,
    };
    match event.kind {
        EventKind::StateChange => {
            detail.old_state = Some(tcp_state_name(event.old_state));
            detail.new_state = Some(tcp_state_name(event.new_state));
        }
        _ => detail.state = Some(tcp_state_name(event.new_state)),
    }
    match event.kind {
        EventKind::SocketError => detail.error = Some(errno_name(event.detail)),
        EventKind::StateChange if event.detail != 0 => {
            detail.error = Some(errno_name(event.detail));
        }
        EventKind::Retransmit if event.detail != 0 => detail.error = Some(errno_name(event.detail)),
        EventKind::ResetSent => {
            detail.reason = reasons.of_reset(event).map(str::to_owned);
        }
        _ => {}
    }
    detail
}

/// Class and direction of a first_payload event.
fn payload(event: &Event) -> Option<(&'static str, &'static str)> {
    (event.kind == EventKind::FirstPayload).then(|| {
        (
            payload_class_name(event.detail as u8),
            if event.received { "received" } else { "sent" },
        )
    })
}

fn side_name(side: Option<Side>) -> Option<&'static str> {
    side.map(|side| match side {
        Side::Client => "client",
        Side::Server => "server",
    })
}

/// One NDJSON line.
fn to_line(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}

/// Writes lines to stdout (or any writer, for tests).
pub struct Output<W: Write> {
    format: Format,
    out: W,
    context: Context,
    trace: Option<TraceWriter>,
    trace_errors: u64,
}

impl<W: Write> Output<W> {
    pub fn new(format: Format, out: W, context: Context) -> Self {
        Self {
            format,
            out,
            context,
            trace: None,
            trace_errors: 0,
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
        ports: &[u16],
        attached: &[&'static str],
        missing: &[Missing],
        nat_idle: &NatIdle,
    ) -> io::Result<()> {
        let line = StartLine {
            line_type: "start",
            v: SCHEMA_VERSION,
            ts: self.context.clock.rfc3339(BootClock::now_boot_ns()),
            node: &self.context.node,
            version: env!("CARGO_PKG_VERSION"),
            kernel,
            ports,
            attached,
            missing: missing
                .iter()
                .map(|m| MissingLine {
                    tracepoint: m.tracepoint,
                    reason: &m.reason,
                })
                .collect(),
            unavailable: crate::programs::unavailable_kinds(
                &missing.iter().map(|m| m.tracepoint).collect::<Vec<_>>(),
            ),
            nat_idle_s: nat_idle.threshold.as_secs_f64(),
            nat_idle_profile: nat_idle.profile,
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
                comm: owner.map(|o| o.comm.as_str()),
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
            match &event.owner {
                Some(o) => line.push_str(&format!(" pid={} comm={} uid={}", o.pid, o.comm, o.uid)),
                None => line.push_str(" pid=?"),
            }
            if let Some(side) = side_name(event.side) {
                line.push_str(&format!(" side={side}"));
            }
            line.push_str(&pod_text(event.pod.as_deref()));
            line.push_str(&format!(" netns={} cookie={}\n", event.netns, event.cookie));
            Some(line)
        } else {
            None
        };
        self.publish(json, text)
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
                    comm: owner.map(|o| o.comm.as_str()),
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
                    intercepted: finding
                        .tls
                        .as_ref()
                        .and_then(|t| t.intercepted.as_ref())
                        .map(|app| InterceptedLine {
                            src: app.src.to_string(),
                            dst: app.dst.to_string(),
                            pid: app.owner.as_ref().map(|o| o.pid),
                            comm: app.owner.as_ref().map(|o| o.comm.as_str()),
                            uid: app.owner.as_ref().map(|o| o.uid),
                            outcome: app.outcome,
                        }),
                    pod: pod_fields(finding.pod.as_deref()),
                };
            Some(to_line(&line)?)
        } else {
            None
        };
        let text = if self.format == Format::Text {
            let who = match &finding.owner {
                Some(o) => format!("pid={} comm={} uid={}", o.pid, o.comm, o.uid),
                None => "pid=?".into(),
            };
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
                block.push_str(&text);
                block.push('\n');
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
        summaries: &crate::summaries::FlowSummaries,
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
        };
        let json = to_line(&line)?;
        self.publish(Some(json), None)
    }

    /// Writes a line: JSON to the trace files and, in JSON format, to stdout; text to stdout
    /// in text format. A failing trace file is counted and warned about, never fatal; a
    /// failing stdout is returned (the caller stops).
    fn publish(&mut self, json: Option<Vec<u8>>, text: Option<String>) -> io::Result<()> {
        if let (Some(trace), Some(json)) = (self.trace.as_mut(), json.as_ref())
            && let Err(error) = trace.write_line(json)
        {
            if self.trace_errors == 0 {
                tracing::warn!("cannot write the trace file: {error} (counted; tracing goes on)");
            }
            self.trace_errors += 1;
        }
        match (self.format, json, text) {
            (Format::Json, Some(json), _) => self.out.write_all(&json),
            (Format::Text, _, Some(text)) => self.out.write_all(text.as_bytes()),
            _ => Ok(()),
        }
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
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
