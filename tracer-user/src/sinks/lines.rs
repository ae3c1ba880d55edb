//! The JSON shapes of the lines shuffletrace writes (`start`, `event`, `finding`, `stats`), as
//! the schema describes them, and the small conversions they need. `Output` fills them.

use std::io::{self};

use serde::Serialize;

use crate::{
    events::k8s::PodRef,
    events::{
        Event, EventKind, Owner, ResetReasons, Side, errno_name, payload_class_name, tcp_state_name,
    },
};

#[derive(Serialize)]
pub(super) struct EventLine<'a> {
    #[serde(rename = "type")]
    pub(super) line_type: &'static str,
    pub(super) v: u32,
    pub(super) event: &'static str,
    pub(super) ts: String,
    pub(super) node: &'a str,
    pub(super) src: String,
    pub(super) dst: String,
    pub(super) netns: u32,
    pub(super) pid: Option<u32>,
    pub(super) tid: Option<u32>,
    #[serde(flatten)]
    pub(super) process: ProcessFields<'a>,
    pub(super) uid: Option<u32>,
    pub(super) cgroup_id: Option<u64>,
    pub(super) cookie: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(super) soft_error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) peer_ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) direction: Option<&'static str>,
    #[serde(flatten)]
    pub(super) pod: PodFields<'a>,
    #[serde(flatten)]
    pub(super) isn: IsnFields,
}

/// `isn_sent`, `isn_received`: the connection's initial sequence numbers as this end knows
/// them (see `events::Isn`); absent when unknown.
#[derive(Serialize, Default)]
pub(super) struct IsnFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) isn_sent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) isn_received: Option<u32>,
}

impl From<crate::events::Isn> for IsnFields {
    fn from(isn: crate::events::Isn) -> Self {
        Self {
            isn_sent: isn.sent,
            isn_received: isn.received,
        }
    }
}

/// `pod`, `namespace`, `container` of a flow in a Kubernetes pod (absent otherwise).
#[derive(Serialize, Default)]
pub(super) struct PodFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) container: Option<&'a str>,
}

pub(super) fn pod_fields(pod: Option<&PodRef>) -> PodFields<'_> {
    match pod {
        Some(pod) => PodFields {
            pod: Some(&pod.pod),
            namespace: Some(&pod.namespace),
            container: pod.container.as_deref(),
        },
        None => PodFields::default(),
    }
}

/// `comm`: the process's name (the thread's when the process could not be named); `thread`:
/// the name of the thread that made the socket, when it differs; `main_class`: a JVM's.
#[derive(Serialize, Default)]
pub(super) struct ProcessFields<'a> {
    pub(super) comm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) thread: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) main_class: Option<&'a str>,
}

pub(super) fn process_fields(owner: Option<&Owner>) -> ProcessFields<'_> {
    let Some(owner) = owner else {
        return ProcessFields::default();
    };
    match &owner.process {
        Some(process) => ProcessFields {
            comm: Some(&process.name),
            thread: (*owner.comm != *process.name).then_some(&*owner.comm),
            main_class: process.main_class.as_deref(),
        },
        None => ProcessFields {
            comm: Some(&*owner.comm),
            ..ProcessFields::default()
        },
    }
}

/// `pid=10 comm=java main_class=org.example.Main thread=shuffle-client- uid=1000`, or `pid=?`.
pub(super) fn owner_text(owner: Option<&Owner>) -> String {
    let Some(o) = owner else {
        return "pid=?".into();
    };
    let fields = process_fields(Some(o));
    let mut text = format!("pid={} comm={}", o.pid, fields.comm.unwrap_or("?"));
    if let Some(class) = fields.main_class {
        text.push_str(&format!(" main_class={class}"));
    }
    if let Some(thread) = fields.thread {
        text.push_str(&format!(" thread={thread}"));
    }
    text.push_str(&format!(" uid={}", o.uid));
    text
}

pub(super) fn pod_text(pod: Option<&PodRef>) -> String {
    match pod {
        Some(p) => match &p.container {
            Some(c) => format!(" pod={}/{} container={c}", p.namespace, p.pod),
            None => format!(" pod={}/{}", p.namespace, p.pod),
        },
        None => String::new(),
    }
}

#[derive(Serialize)]
pub(super) struct MissingLine<'a> {
    pub(super) tracepoint: &'a str,
    pub(super) reason: &'a str,
}

#[derive(Serialize)]
pub(super) struct StartLine<'a> {
    #[serde(rename = "type")]
    pub(super) line_type: &'static str,
    pub(super) v: u32,
    pub(super) ts: String,
    pub(super) node: &'a str,
    pub(super) version: &'static str,
    pub(super) kernel: &'a str,
    pub(super) ports: &'a [u16],
    pub(super) attached: &'a [&'static str],
    pub(super) missing: Vec<MissingLine<'a>>,
    pub(super) unavailable: &'a [&'static str],
    pub(super) nat_idle_s: f64,
    pub(super) nat_idle_profile: &'static str,
    /// `--netns` (absent: every namespace).
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    pub(super) netns: &'a [u32],
    pub(super) addresses: &'a [std::net::IpAddr],
}

#[derive(Serialize)]
pub(super) struct StatsLine<'a> {
    #[serde(rename = "type")]
    pub(super) line_type: &'static str,
    pub(super) v: u32,
    pub(super) ts: String,
    pub(super) node: &'a str,
    pub(super) events: u64,
    pub(super) findings: u64,
    pub(super) finding_lines: u64,
    pub(super) decode_errors: u64,
    pub(super) lost_events: u64,
    pub(super) owner_table_full: u64,
    pub(super) listener_table_full: u64,
    pub(super) read_failed: u64,
    pub(super) activity_table_full: u64,
    pub(super) repeat_table_full: u64,
    pub(super) recursion_misses: u64,
    pub(super) flows: usize,
    pub(super) flow_evictions: u64,
    pub(super) trace_bytes: u64,
    pub(super) trace_files_deleted: u64,
    pub(super) trace_write_errors: u64,
    pub(super) clean_flows: u64,
    pub(super) clean_flows_unattributed: u64,
    pub(super) clean_flows_by_port: Vec<crate::flows::summaries::PortSummary>,
    pub(super) repeats_counted: u64,
    pub(super) closes_unseen: u64,
    pub(super) slots_expired: u64,
}

#[derive(Serialize)]
pub(super) struct EvidenceLine {
    pub(super) ts: String,
    pub(super) event: &'static str,
    pub(super) src: String,
    pub(super) dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) new_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) peer_ttl: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) direction: Option<&'static str>,
    #[serde(flatten)]
    pub(super) isn: IsnFields,
}

#[derive(Serialize)]
pub(super) struct FindingLine<'a> {
    #[serde(rename = "type")]
    pub(super) line_type: &'static str,
    pub(super) v: u32,
    pub(super) id: u64,
    pub(super) kind: &'static str,
    pub(super) severity: &'static str,
    pub(super) ts: String,
    pub(super) node: &'a str,
    pub(super) src: String,
    pub(super) dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) service: Option<&'static str>,
    pub(super) netns: u32,
    pub(super) pid: Option<u32>,
    #[serde(flatten)]
    pub(super) process: ProcessFields<'a>,
    pub(super) uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) side: Option<&'static str>,
    pub(super) summary: &'a str,
    pub(super) evidence: Vec<EvidenceLine>,
    pub(super) remedy: &'a str,
    pub(super) count: u64,
    pub(super) first_ts: String,
    pub(super) last_ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) update_of: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) idle_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) threshold_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) keepalive: Option<KeepaliveLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sidecar: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) sent: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) answer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) confidence: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) basis: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) intercepted: Option<InterceptedLine<'a>>,
    #[serde(flatten)]
    pub(super) pod: PodFields<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) peer: Option<PeerLine<'a>>,
    #[serde(flatten)]
    pub(super) isn: IsnFields,
}

/// The connection's other end, when it is on this host too (a joined finding).
#[derive(Serialize)]
pub(super) struct PeerLine<'a> {
    pub(super) addr: String,
    pub(super) netns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) side: Option<&'static str>,
    pub(super) pid: Option<u32>,
    #[serde(flatten)]
    pub(super) process: ProcessFields<'a>,
    pub(super) uid: Option<u32>,
    #[serde(flatten)]
    pub(super) pod: PodFields<'a>,
}

#[derive(Serialize)]
pub(super) struct InterceptedLine<'a> {
    pub(super) src: String,
    pub(super) dst: String,
    pub(super) pid: Option<u32>,
    #[serde(flatten)]
    pub(super) process: ProcessFields<'a>,
    pub(super) uid: Option<u32>,
    pub(super) outcome: &'static str,
}

#[derive(Serialize)]
pub(super) struct KeepaliveLine {
    pub(super) enabled: bool,
    pub(super) idle_s: f64,
    pub(super) interval_s: f64,
    pub(super) probes: u32,
}

/// The parts of an event line that depend on its kind.
pub(super) struct Detail {
    pub(super) old_state: Option<&'static str>,
    pub(super) new_state: Option<&'static str>,
    pub(super) state: Option<&'static str>,
    pub(super) error: Option<String>,
    pub(super) reason: Option<String>,
}

pub(super) fn detail(event: &Event, reasons: &ResetReasons) -> Detail {
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
pub(super) fn payload(event: &Event) -> Option<(&'static str, &'static str)> {
    (event.kind == EventKind::FirstPayload).then(|| {
        (
            payload_class_name(event.detail as u8),
            if event.received { "received" } else { "sent" },
        )
    })
}

pub(super) fn side_name(side: Option<Side>) -> Option<&'static str> {
    side.map(|side| match side {
        Side::Client => "client",
        Side::Server => "server",
    })
}

/// One NDJSON line.
pub(super) fn to_line(value: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(line)
}
