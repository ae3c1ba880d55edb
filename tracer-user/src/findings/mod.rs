//! The correlation engine: turns kernel events, joined per flow, into findings: what broke,
//! where, who was affected, the evidence, and what to change.

mod aggregate;
mod connect;
pub mod idle;
pub mod join;
mod path;
pub mod remedies;
mod tls;
mod tls_ports;

pub use aggregate::Aggregator;
pub use join::{Joiner, PeerEnd};

use std::{collections::VecDeque, net::SocketAddr};

use tracer_ebpf::tcp_state;

use crate::{
    config::Thresholds,
    events::keepalive::KeepaliveSettings,
    events::{Event, EventKind, Owner, ResetReasons, Side},
};

/// Most kernel events kept as evidence of one flow (the first ones: the connect, then what
/// went wrong).
pub const MAX_EVIDENCE: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    ConnectRefused,
    ConnectTimeout,
    HostUnreachable,
    PeerReset,
    MiddleboxReset,
    LocalReset,
    ReturnPathBlocked,
    RetransmitStorm,
    IdleAtRisk,
    NatIdleTimeout,
    HalfOpen,
    TlsMismatch,
}

impl FindingKind {
    /// Stable identifier used in output.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::HostUnreachable => "host_unreachable",
            Self::PeerReset => "peer_reset",
            Self::MiddleboxReset => "middlebox_reset",
            Self::LocalReset => "local_reset",
            Self::ReturnPathBlocked => "return_path_blocked",
            Self::RetransmitStorm => "retransmit_storm",
            Self::IdleAtRisk => "idle_at_risk",
            Self::NatIdleTimeout => "nat_idle_timeout",
            Self::HalfOpen => "half_open",
            Self::TlsMismatch => "tls_mismatch",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// One finding line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Unique within a run; an update line names the finding it updates.
    pub id: u64,
    pub kind: FindingKind,
    pub severity: Severity,
    /// When the line was produced (boot ns of the event that triggered it).
    pub boot_ns: u64,
    /// This host's end and the peer.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub netns: u32,
    pub owner: Option<Owner>,
    pub side: Option<Side>,
    pub summary: String,
    pub remedy: String,
    pub evidence: Vec<Event>,
    /// New occurrences this line reports: the sum over a kind's lines is the exact total. An
    /// update of an occurrence already reported counts 0.
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub update_of: Option<u64>,
    /// For idle findings: how long the flow was idle, against which threshold, and its
    /// keepalive as the kernel last saw it.
    pub idle: Option<IdleDetail>,
    /// For tls_mismatch: who spoke what to whom.
    pub tls: Option<TlsDetail>,
    /// The Kubernetes pod (and container) of the flow, when it is in one.
    pub pod: Option<std::sync::Arc<crate::events::k8s::PodRef>>,
    /// The connection's other end, when it is on this host too (see `join`).
    pub peer: Option<PeerEnd>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsDetail {
    /// `tls_to_plaintext` or `plaintext_to_tls`.
    pub direction: &'static str,
    /// The sender is an Envoy / Istio sidecar (comm `envoy` or uid 1337).
    pub sidecar: bool,
    /// Class of what was sent, and what came back (a class, or how the peer ended it).
    pub sent: &'static str,
    pub answer: String,
    /// How sure the verdict is, and what it rests on.
    pub confidence: Confidence,
    pub basis: String,
    /// The application's own connection the sidecar intercepted, when one is found.
    pub intercepted: Option<Intercepted>,
}

/// How sure a tls_mismatch is: `Certain` when the peer's own bytes on the connection say it
/// (a TLS record answering plaintext, non-TLS bytes answering a ClientHello); `Likely` when
/// it rests on a silent close or reset and what is known of the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    Certain,
    Likely,
}

impl Confidence {
    pub fn name(self) -> &'static str {
        match self {
            Self::Certain => "certain",
            Self::Likely => "likely",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intercepted {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub owner: Option<Owner>,
    /// What the application saw: `reset`, `closed`, or `open` (nothing yet).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IdleDetail {
    pub idle_s: f64,
    pub threshold_s: f64,
    pub keepalive: Option<KeepaliveSettings>,
}

impl Eq for IdleDetail {}

/// Per-flow correlation state, kept in the flow table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Track {
    /// The flow's first events, bounded by MAX_EVIDENCE.
    evidence: Vec<Event>,
    syn_retransmits: u32,
    first_syn_retransmit_ns: u64,
    /// The connect_timeout finding printed on its own line, whose update is still owed.
    timeout_id: Option<u64>,
    timeout_reported: bool,
    /// A refused / unreachable / reset verdict was given: the flow's end is explained.
    verdict_given: bool,
    /// Times of recent retransmits of the established flow (at most storm_retransmits).
    retransmits: VecDeque<u64>,
    storm_quiet_until_ns: u64,
    synack_retransmits: u32,
    return_path_reported: bool,
    /// Retransmits since the flow came back from an idle period past the NAT threshold.
    retransmits_after_idle: u32,
    /// An idle break (nat_idle_timeout or half_open) was reported: the flow is not warned
    /// about as idle again.
    pub idle_break_reported: bool,
    tls_reported: bool,
    /// The flow was added to the recent client connections (sidecar linking).
    remembered: bool,
}

impl Track {
    pub fn remember(&mut self, event: &Event) {
        // Evidence lines show neither owner nor pod (the finding carries them, from the
        // flow): not cloning them saves an allocation per event of every tracked flow.
        let kept = Event {
            owner: None,
            pod: None,
            ..event.clone()
        };
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(kept);
        } else if let Some(last) = self.evidence.last_mut() {
            // Keep the first events and the most recent one.
            *last = kept;
        }
    }
}

/// A flow as the findings engine keeps it: the flow table's entry with its correlation state.
pub type Flow = crate::flows::Flow<Track>;
/// The flow table of the findings engine.
pub type FlowTable = crate::flows::FlowTable<Track>;

/// The engine. Feed it events in order; it returns findings (before aggregation).
pub struct Correlator {
    config: Thresholds,
    reasons: ResetReasons,
    next_id: u64,
    /// Sidecar linking (see `tls`).
    sidecars: tls::Sidecars,
    /// Server endpoints seen speaking TLS (see `tls_ports`).
    tls_ports: tls_ports::TlsPorts,
}

impl Correlator {
    pub fn new(config: Thresholds, reasons: ResetReasons) -> Self {
        Self {
            config,
            reasons,
            next_id: 1,
            sidecars: tls::Sidecars::default(),
            tls_ports: tls_ports::TlsPorts::default(),
        }
    }

    pub(super) fn finding(
        &mut self,
        kind: FindingKind,
        severity: Severity,
        event: &Event,
    ) -> Finding {
        let id = self.next_id;
        self.next_id += 1;
        Finding {
            id,
            kind,
            severity,
            boot_ns: event.boot_ns,
            src: event.local,
            dst: event.remote,
            netns: event.netns,
            owner: event.owner.clone(),
            side: event.side,
            summary: String::new(),
            remedy: String::new(),
            evidence: Vec::new(),
            count: 1,
            first_ns: event.boot_ns,
            last_ns: event.boot_ns,
            update_of: None,
            idle: None,
            tls: None,
            peer: None,
            pod: event.pod.clone(),
        }
    }

    /// Correlates one event (already joined to its flow, when it has one).
    pub fn on_event(&mut self, event: &Event, flow: Option<&mut Flow>, out: &mut Vec<Finding>) {
        let Some(flow) = flow else {
            // No socket: a RST this host sent for a segment that matched nothing.
            if event.kind == EventKind::ResetSent {
                out.push(self.local_reset(event, &[]));
            }
            return;
        };
        flow.track.remember(event);
        self.note_connection(event, flow);
        self.check_tls(event, flow);
        match event.kind {
            EventKind::ResetReceived => self.reset_received(event, flow, out),
            EventKind::SocketError => self.socket_error(event, flow, out),
            EventKind::Retransmit => self.retransmit(event, flow, out),
            EventKind::SynackRetransmit => self.synack_retransmit(event, flow, out),
            EventKind::ResetSent
                if self.reasons.name(event.detail) == Some("TCP_KEEPALIVE_TIMEOUT") =>
            {
                self.idle_break(event, flow, "its keepalive probes went unanswered", out);
            }
            EventKind::ResetSent => {
                let finding = self.local_reset(event, &flow.track.evidence);
                out.push(finding);
            }
            // A close with an error is as good as the error report, which can come too late
            // to carry it (see the kernel program); verdicts are given once per flow.
            EventKind::StateChange if event.new_state == tcp_state::CLOSE && event.detail != 0 => {
                self.socket_error(event, flow, out)
            }
            // How it closed is not known: nothing is said of it.
            EventKind::StateChange
            | EventKind::FirstPayload
            | EventKind::FlowSummary
            | EventKind::CloseUnseen => {}
        }
    }

    /// A flow left the table (closed and lingered, or at shutdown): owed updates are written.
    pub fn on_flow_end(&mut self, mut flow: Flow, now_ns: u64, out: &mut Vec<Finding>) {
        if flow.track.timeout_id.is_some() && flow.closed_ns.is_some() {
            let closed = flow.closed_ns.unwrap_or(now_ns);
            if let Some(update) = self.timeout_update(&mut flow, closed, false) {
                out.push(update);
            }
        }
    }

    /// Forget the id of a connect_timeout that was folded into an aggregate line: no update
    /// line will follow it.
    pub fn folded(flow: &mut Flow, id: u64) {
        if flow.track.timeout_id == Some(id) {
            flow.track.timeout_id = None;
        }
    }
}

impl Finding {
    /// The connection's initial sequence numbers as this end knows them: from its own
    /// events in the evidence (a joined finding's evidence has the peer's too).
    pub fn isn(&self) -> crate::events::Isn {
        let mut isn = crate::events::Isn::default();
        for event in self.evidence.iter().filter(|e| e.local == self.src) {
            isn.sent = isn.sent.or(event.isn.sent);
            isn.received = isn.received.or(event.isn.received);
        }
        isn
    }

    /// The port of the service the finding is about (this host's for the server side).
    pub fn service_port(&self) -> u16 {
        match self.side {
            Some(Side::Server) => self.src.port(),
            _ => self.dst.port(),
        }
    }
}

#[cfg(test)]
mod remedy_tests;
#[cfg(test)]
mod tests;
