//! The correlation engine: turns kernel events, joined per flow, into findings: what broke,
//! where, who was affected, the evidence, and what to change.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use tracer_ebpf::tcp_state;

use crate::{
    events::{
        Event, EventKind, Owner, ResetReasons, Side, errno_name, payload_class_name, tcp_state_name,
    },
    flows::Flow,
    idle::{KeepaliveSettings, NatIdle},
    remedies,
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
    pub pod: Option<std::sync::Arc<crate::k8s::PodRef>>,
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
    /// The application's own connection the sidecar intercepted, when one is found.
    pub intercepted: Option<Intercepted>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intercepted {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub owner: Option<Owner>,
    /// What the application saw: `reset`, `closed`, or `open` (nothing yet).
    pub outcome: &'static str,
}

/// A recent client connection, kept to find the one a sidecar intercepted.
#[derive(Clone, Debug)]
struct AppConnection {
    cookie: u64,
    netns: u32,
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<Owner>,
    started_ns: u64,
    outcome: &'static str,
}

/// Most recent client connections remembered for sidecar linking.
const RECENT_CONNECTIONS: usize = 1024;
/// A tls_mismatch waits this long for the intercepted application's outcome.
const TLS_SETTLE_NS: u64 = 300_000_000;

/// Istio's proxy uid.
const ISTIO_PROXY_UID: u32 = 1337;

fn is_sidecar(owner: Option<&Owner>) -> bool {
    owner.is_some_and(|o| o.uid == ISTIO_PROXY_UID || o.comm == "envoy")
}

#[derive(Clone, Debug, PartialEq)]
pub struct IdleDetail {
    pub idle_s: f64,
    pub threshold_s: f64,
    pub keepalive: Option<KeepaliveSettings>,
}

impl Eq for IdleDetail {}

/// Thresholds, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// `retransmit_storm`: at least this many retransmits of an established flow ...
    pub storm_retransmits: u32,
    /// ... within this window.
    pub storm_window_ns: u64,
    /// `return_path_blocked`: SYN-ACK retransmits of one request without the final ACK.
    pub synack_retransmits: u32,
    /// Identical findings within this window are folded into one line with a count.
    pub aggregate_window_ns: u64,
    /// The NAT idle timeout flows are checked against.
    pub nat_idle: NatIdle,
    /// The kernel's tick rate (keepalive settings are in jiffies); set at session start.
    pub hz: u32,
}

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
    idle_break_reported: bool,
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

/// The engine. Feed it events in order; it returns findings (before aggregation).
pub struct Correlator {
    config: Config,
    reasons: ResetReasons,
    next_id: u64,
    /// Recent client connections (bounded), for sidecar linking.
    recent: std::collections::VecDeque<AppConnection>,
    /// tls_mismatch findings waiting for the intercepted application's outcome.
    pending_tls: Vec<(u64, Finding)>,
}

impl Correlator {
    pub fn new(config: Config, reasons: ResetReasons) -> Self {
        Self {
            config,
            reasons,
            next_id: 1,
            recent: std::collections::VecDeque::new(),
            pending_tls: Vec::new(),
        }
    }

    fn finding(&mut self, kind: FindingKind, severity: Severity, event: &Event) -> Finding {
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
            EventKind::StateChange | EventKind::FirstPayload | EventKind::FlowSummary => {}
        }
    }

    /// Remembers client connections (to link a sidecar's connection to the application's it
    /// intercepted) and what happened to them.
    fn note_connection(&mut self, event: &Event, flow: &mut Flow) {
        // Only flows that were remembered are looked up, newest first: the list is searched
        // for every event of a client flow, and this keeps that O(1) in practice.
        let known = if flow.track.remembered {
            self.recent
                .iter_mut()
                .rev()
                .find(|c| c.cookie == event.cookie)
        } else {
            None
        };
        if let Some(known) = known {
            known.local = flow.local;
            known.outcome = match event.kind {
                EventKind::ResetReceived => "reset",
                EventKind::StateChange if event.new_state == tcp_state::CLOSE_WAIT => "closed",
                EventKind::StateChange if event.new_state == tcp_state::CLOSE => {
                    if known.outcome == "open" {
                        "closed"
                    } else {
                        known.outcome
                    }
                }
                _ => known.outcome,
            };
            return;
        }
        if event.kind == EventKind::StateChange
            && event.new_state == tcp_state::SYN_SENT
            && !is_sidecar(event.owner.as_ref())
        {
            flow.track.remembered = true;
            self.remember_connection(AppConnection {
                cookie: event.cookie,
                netns: event.netns,
                local: flow.local,
                remote: event.remote,
                owner: event.owner.clone(),
                started_ns: event.boot_ns,
                outcome: "open",
            });
        }
    }

    /// Adds a client connection to the bounded recent list, the oldest leaving first.
    fn remember_connection(&mut self, connection: AppConnection) {
        if self.recent.len() >= RECENT_CONNECTIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(connection);
    }

    /// A clean client flow the kernel kept quiet and summarised: remembered for sidecar
    /// linking like the connections reported event by event (a sidecar that fails upstream
    /// may close the application's connection cleanly).
    pub fn note_summary(&mut self, event: &Event) {
        if event.old_state != tcp_state::SYN_SENT || is_sidecar(event.owner.as_ref()) {
            return;
        }
        // Rounded up: the lifetime is in whole milliseconds.
        let lifetime_ns = (u64::try_from(event.detail).unwrap_or(0) + 1) * 1_000_000;
        self.remember_connection(AppConnection {
            cookie: event.cookie,
            netns: event.netns,
            local: event.local,
            remote: event.remote,
            owner: event.owner.clone(),
            started_ns: event.boot_ns.saturating_sub(lifetime_ns),
            outcome: "closed",
        });
    }

    /// A TLS ClientHello answered without TLS, or plaintext answered with TLS.
    fn check_tls(&mut self, event: &Event, flow: &mut Flow) {
        use tracer_ebpf::payload_class::{NONE, TLS_CLIENT_HELLO, is_tls};
        if flow.track.tls_reported || flow.tx_class == NONE {
            return;
        }
        let peer_ended = match event.kind {
            EventKind::ResetReceived => Some("reset the connection"),
            EventKind::StateChange if event.new_state == tcp_state::CLOSE_WAIT => {
                Some("closed the connection")
            }
            _ => None,
        };
        let answered = event.kind == EventKind::FirstPayload && event.received;
        let (direction, answer) = if flow.tx_class == TLS_CLIENT_HELLO {
            match (answered, peer_ended) {
                (true, _) if !is_tls(flow.rx_class) => (
                    "tls_to_plaintext",
                    format!("answered with {}", payload_class_name(flow.rx_class)),
                ),
                (false, Some(how)) if flow.rx_class == NONE => {
                    ("tls_to_plaintext", format!("{how} without a TLS record"))
                }
                _ => return,
            }
        } else if !is_tls(flow.tx_class) && answered && is_tls(flow.rx_class) {
            (
                "plaintext_to_tls",
                format!("answered with {}", payload_class_name(flow.rx_class)),
            )
        } else {
            return;
        };
        flow.track.tls_reported = true;
        // The mismatch explains the reset or close that follows.
        flow.track.verdict_given = true;
        let sidecar = is_sidecar(flow.owner.as_ref());
        let sent = payload_class_name(flow.tx_class);
        let mut f = self.finding(FindingKind::TlsMismatch, Severity::Error, event);
        f.src = flow.local;
        f.dst = flow.remote;
        f.owner = flow.owner.clone();
        f.netns = flow.netns;
        f.first_ns = flow.first_ns;
        f.evidence = flow.track.evidence.clone();
        let who = match &flow.owner {
            Some(o) if sidecar => format!("the sidecar ({} uid {})", o.comm, o.uid),
            Some(o) => format!("{} (pid {})", o.comm, o.pid),
            None => "this host".to_owned(),
        };
        f.summary = if direction == "tls_to_plaintext" {
            format!(
                "{who} sent a TLS ClientHello to {}, which does not speak TLS: it {answer}.",
                flow.remote
            )
        } else {
            format!(
                "{who} sent plaintext ({sent}) to {}, which speaks TLS: it {answer}.",
                flow.remote
            )
        };
        f.remedy = remedies::tls_mismatch(flow.remote, direction, sidecar);
        f.tls = Some(TlsDetail {
            direction,
            sidecar,
            sent,
            answer,
            intercepted: None,
        });
        self.pending_tls.push((event.boot_ns + TLS_SETTLE_NS, f));
    }

    /// Writes the tls_mismatch findings whose wait for the application's outcome is over
    /// (all of them when `now_ns` is u64::MAX, at shutdown).
    pub fn due_tls(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tls)
            .into_iter()
            .partition(|(at, _)| *at <= now_ns);
        self.pending_tls = waiting;
        for (_, mut finding) in due {
            let sidecar = finding.tls.as_ref().is_some_and(|tls| tls.sidecar);
            let intercepted = if sidecar {
                self.intercepted(&finding)
            } else {
                None
            };
            if let Some(tls) = finding.tls.as_mut() {
                tls.intercepted = intercepted;
                if let Some(app) = &tls.intercepted {
                    finding.summary = format!(
                        "{} It intercepted {}'s connection from {} to {}, and the application \
                         saw it {}.",
                        finding.summary,
                        app.owner
                            .as_ref()
                            .map_or("an application", |o| o.comm.as_str()),
                        app.src,
                        app.dst,
                        match app.outcome {
                            "reset" => "reset",
                            "closed" => "closed",
                            _ => "still open",
                        }
                    );
                }
            }
            out.push(finding);
        }
    }

    /// The application connection a sidecar intercepted: the latest one in the same network
    /// namespace to the same destination, started shortly before the sidecar's.
    fn intercepted(&self, sidecar: &Finding) -> Option<Intercepted> {
        self.recent
            .iter()
            .rev()
            .find(|c| {
                c.netns == sidecar.netns
                    && c.remote == sidecar.dst
                    && c.started_ns <= sidecar.first_ns
                    && sidecar.first_ns - c.started_ns < 10_000_000_000
            })
            .map(|c| Intercepted {
                src: c.local,
                dst: c.remote,
                owner: c.owner.clone(),
                outcome: c.outcome,
            })
    }

    fn reset_received(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
        if flow.track.verdict_given {
            return; // the error report came first and was already explained
        }
        let in_connect = event.new_state == tcp_state::SYN_SENT;
        if !in_connect && self.idle_broke(event).is_some() {
            let how = match (event.ttl, event.peer_ttl) {
                (Some(rst), Some(peer)) if rst != peer => format!(
                    "a RST came back from a device in between (TTL {rst}, the peer's is {peer})"
                ),
                _ => "a RST came back".to_owned(),
            };
            return self.idle_break(event, flow, &how, out);
        }
        flow.track.verdict_given = true;
        let forged = matches!((event.ttl, event.peer_ttl), (Some(rst), Some(peer)) if rst != peer);
        let mut finding = if forged {
            let (rst, peer) = (event.ttl.unwrap_or(0), event.peer_ttl.unwrap_or(0));
            let mut f = self.finding(FindingKind::MiddleboxReset, Severity::Error, event);
            f.summary = format!(
                "A RST {} {} did not come from the peer: it arrived with TTL {rst}, while {}'s own \
                 packets arrive with TTL {peer} (a device in between sent it).",
                if in_connect {
                    "answering the SYN to"
                } else {
                    "ended the connection to"
                },
                event.remote,
                event.remote.ip()
            );
            f.remedy = remedies::middlebox_reset(event.remote, rst, peer);
            f
        } else if in_connect {
            let mut f = self.finding(FindingKind::ConnectRefused, Severity::Error, event);
            f.summary = format!(
                "Connection refused: {} answered the SYN with a RST (nothing listens on port {}, \
                 or a firewall rejects it).",
                event.remote,
                event.remote.port()
            );
            f.remedy = remedies::connect_refused(event.remote);
            f
        } else {
            let mut f = self.finding(FindingKind::PeerReset, Severity::Error, event);
            f.summary = format!(
                "The peer {} reset the connection while it was {}.",
                event.remote,
                tcp_state_name(event.new_state)
            );
            f.remedy = remedies::peer_reset(event.remote, flow.side);
            f
        };
        finding.evidence = flow.track.evidence.clone();
        finding.first_ns = flow.first_ns;
        out.push(finding);
    }

    fn socket_error(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
        match event.detail {
            libc::ECONNREFUSED if !flow.track.verdict_given => {
                // The RST itself was not seen (lost or arrived before tracing): the error says it.
                flow.track.verdict_given = true;
                let mut f = self.finding(FindingKind::ConnectRefused, Severity::Error, event);
                f.summary = format!(
                    "Connection refused: connect() to {} failed with ECONNREFUSED.",
                    event.remote
                );
                f.remedy = remedies::connect_refused(event.remote);
                f.evidence = flow.track.evidence.clone();
                f.first_ns = flow.first_ns;
                out.push(f);
            }
            libc::EHOSTUNREACH | libc::ENETUNREACH if !flow.track.verdict_given => {
                flow.track.verdict_given = true;
                let error = errno_name(event.detail);
                let mut f = self.finding(FindingKind::HostUnreachable, Severity::Error, event);
                f.summary = format!(
                    "{} is unreachable: an ICMP error ({error}) ended the connection{}.",
                    event.remote,
                    if flow.track.syn_retransmits > 0 || event.new_state != tcp_state::ESTABLISHED {
                        " attempt"
                    } else {
                        ""
                    }
                );
                f.remedy = remedies::host_unreachable(event.remote, &error);
                f.evidence = flow.track.evidence.clone();
                f.first_ns = flow.first_ns;
                out.push(f);
            }
            libc::ETIMEDOUT
                if event.old_state != tcp_state::SYN_SENT
                    && flow.track.timeout_id.is_none()
                    && self.idle_broke(event).is_some() =>
            {
                self.idle_break(event, flow, "the kernel gave up on it (ETIMEDOUT)", out);
            }
            libc::ETIMEDOUT if flow.track.timeout_id.is_some() => {
                if let Some(update) = self.timeout_update(flow, event.boot_ns, true) {
                    out.push(update);
                }
            }
            _ => {}
        }
    }

    fn retransmit(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
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

    fn synack_retransmit(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
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

    /// The idle period (ms) before this event, if it was past the NAT idle threshold.
    fn idle_broke(&self, event: &Event) -> Option<u32> {
        // An idle period that ended within the last two minutes still explains a break: the
        // first data after it is retransmitted for a while before anything gives up.
        let idle_ms = event.idle?.before_ms(120_000);
        (u128::from(idle_ms) * 1_000_000 >= self.config.nat_idle.threshold.as_nanos())
            .then_some(idle_ms)
    }

    fn idle_detail(&self, idle_ms: u32, flow: &Flow) -> IdleDetail {
        IdleDetail {
            idle_s: f64::from(idle_ms) / 1000.0,
            threshold_s: self.config.nat_idle.threshold.as_secs_f64(),
            keepalive: flow.keepalive,
        }
    }

    /// A flow idle past the NAT threshold broke on next use: `nat_idle_timeout` on the client
    /// side, `half_open` on the server side (the peer is gone; this end kept the socket).
    fn idle_break(&mut self, event: &Event, flow: &mut Flow, how: &str, out: &mut Vec<Finding>) {
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
            pod: flow.pod.clone().flatten(),
            idle: Some(IdleDetail {
                idle_s,
                threshold_s: nat.threshold.as_secs_f64(),
                keepalive: flow.keepalive,
            }),
        }
    }

    fn local_reset(&mut self, event: &Event, evidence: &[Event]) -> Finding {
        let reason = self
            .reasons
            .of_reset(event)
            .unwrap_or("NOT_SPECIFIED")
            .to_owned();
        let no_socket = event.no_socket || reason == "NO_SOCKET";
        let severity = if no_socket {
            Severity::Warning
        } else {
            Severity::Info
        };
        let mut f = self.finding(FindingKind::LocalReset, severity, event);
        if no_socket {
            f.side = Some(Side::Server);
        }
        f.summary = format!(
            "This host sent a RST to {} from {}: {}.",
            event.remote,
            event.local,
            remedies::reset_reason_meaning(&reason, event.local.port())
        );
        f.remedy = remedies::local_reset(&reason, event.local);
        f.evidence = if evidence.is_empty() {
            vec![event.clone()]
        } else {
            evidence.to_vec()
        };
        f
    }

    /// The update line of a connect_timeout printed on its own: the socket gave up
    /// (ETIMEDOUT) or the application closed it.
    fn timeout_update(&mut self, flow: &mut Flow, now_ns: u64, gave_up: bool) -> Option<Finding> {
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
    /// The port of the service the finding is about (this host's for the server side).
    pub fn service_port(&self) -> u16 {
        match self.side {
            Some(Side::Server) => self.src.port(),
            _ => self.dst.port(),
        }
    }
}

/// Words for an aggregate line: how many occurrences it stands for.
fn close_aggregate(mut f: Finding) -> Finding {
    if f.count > 1 {
        let span = f.last_ns.saturating_sub(f.first_ns) as f64 / 1e9;
        f.summary = format!("{} ({} more times within {span:.1} s.)", f.summary, f.count);
    } else {
        f.summary = format!("{} (Once more.)", f.summary);
    }
    f
}

/// Which end serves: findings about the same service from the same client fold together,
/// whatever the client's ephemeral port.
fn aggregation_key(f: &Finding) -> (FindingKind, SocketAddr, IpAddr, Option<u32>, u32) {
    let (service, client) = match f.side {
        Some(Side::Server) => (f.src, f.dst.ip()),
        _ => (f.dst, f.src.ip()),
    };
    (
        f.kind,
        service,
        client,
        f.owner.as_ref().map(|o| o.pid),
        f.netns,
    )
}

struct Window {
    opened_ns: u64,
    /// Occurrences seen since the last line, not yet printed.
    pending: Option<Finding>,
}

/// Folds identical findings within a window: the first is printed at once, the rest are
/// counted and printed as one line when the window closes. Counts are exact.
pub struct Aggregator {
    window_ns: u64,
    windows: HashMap<(FindingKind, SocketAddr, IpAddr, Option<u32>, u32), Window>,
    /// Most distinct keys held at once; past it the oldest window is flushed early (printed,
    /// not dropped), so memory is bounded and nothing is lost.
    capacity: usize,
}

impl Aggregator {
    pub fn new(window_ns: u64, capacity: usize) -> Self {
        Self {
            window_ns,
            windows: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Offers a finding. Returns the lines to print now (the finding itself when it opens a
    /// window, plus any aggregate flushed to make room) and, when the finding was folded into
    /// a pending aggregate instead, its id.
    pub fn offer(&mut self, finding: Finding) -> (Vec<Finding>, Option<u64>) {
        if finding.update_of.is_some() {
            return (vec![finding], None);
        }
        let key = aggregation_key(&finding);
        let now = finding.boot_ns;
        let mut print = Vec::new();
        let full = self.windows.len() >= self.capacity;
        match self.windows.get_mut(&key) {
            Some(window) if now.saturating_sub(window.opened_ns) < self.window_ns => {
                let id = finding.id;
                match &mut window.pending {
                    Some(pending) => {
                        pending.count += finding.count;
                        pending.first_ns = pending.first_ns.min(finding.first_ns);
                        pending.last_ns = pending.last_ns.max(finding.last_ns);
                        pending.boot_ns = now;
                    }
                    None => window.pending = Some(finding),
                }
                return (print, Some(id));
            }
            Some(window) => {
                // Expired but not flushed yet: its aggregate goes out before the new line.
                print.extend(window.pending.take().map(close_aggregate));
            }
            None if full => {
                print.extend(self.evict_oldest().map(close_aggregate));
            }
            None => {}
        }
        self.windows.insert(
            key,
            Window {
                opened_ns: now,
                pending: None,
            },
        );
        print.push(finding);
        (print, None)
    }

    fn evict_oldest(&mut self) -> Option<Finding> {
        let key = *self
            .windows
            .iter()
            .min_by_key(|(_, w)| w.opened_ns)
            .map(|(k, _)| k)?;
        self.windows.remove(&key).and_then(|w| w.pending)
    }

    /// Closes windows older than the window length: returns their aggregate lines.
    pub fn due(&mut self, now_ns: u64) -> Vec<Finding> {
        let window_ns = self.window_ns;
        let mut lines = Vec::new();
        self.windows.retain(|_, w| {
            if now_ns.saturating_sub(w.opened_ns) < window_ns {
                return true;
            }
            lines.extend(w.pending.take().map(close_aggregate));
            false
        });
        lines.sort_by_key(|f| f.first_ns);
        lines
    }

    /// Everything still pending (at shutdown).
    pub fn flush(&mut self) -> Vec<Finding> {
        let mut lines: Vec<Finding> = self
            .windows
            .drain()
            .filter_map(|(_, w)| w.pending.map(close_aggregate))
            .collect();
        lines.sort_by_key(|f| f.first_ns);
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{events::Owner, flows::FlowTable};

    const SEC: u64 = 1_000_000_000;

    fn config() -> Config {
        Config {
            storm_retransmits: 5,
            storm_window_ns: 10 * SEC,
            synack_retransmits: 2,
            aggregate_window_ns: 10 * SEC,
            nat_idle: NatIdle::parse("10s").unwrap(),
            hz: 250,
        }
    }

    struct Harness {
        flows: FlowTable,
        correlator: Correlator,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                flows: FlowTable::new(1024),
                correlator: Correlator::new(
                    config(),
                    ResetReasons::new(vec![(1, "NO_SOCKET".into()), (14, "TCP_STATE".into())]),
                ),
            }
        }

        fn feed(&mut self, mut event: Event) -> Vec<Finding> {
            let mut out = Vec::new();
            let flow = self.flows.observe(&mut event);
            self.correlator.on_event(&event, flow, &mut out);
            out
        }

        fn end_all(&mut self, now: u64) -> Vec<Finding> {
            let mut out = Vec::new();
            for flow in self.flows.drain() {
                self.correlator.on_flow_end(flow, now, &mut out);
            }
            out
        }
    }

    fn ev(kind: EventKind, cookie: u64, ns: u64, old: u8, new: u8, detail: i32) -> Event {
        Event {
            owner: Some(Owner {
                pid: 42,
                tid: 42,
                uid: 1000,
                comm: "java".into(),
                cgroup_id: 1,
            }),
            side: Some(Side::Client),
            old_state: old,
            new_state: new,
            detail,
            ..crate::events::sample_event(kind, cookie, ns)
        }
    }

    const SS: u8 = tcp_state::SYN_SENT;
    const CL: u8 = tcp_state::CLOSE;
    const ES: u8 = tcp_state::ESTABLISHED;

    fn kinds(found: &[Finding]) -> Vec<FindingKind> {
        found.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn refused_connect_gives_one_finding() {
        let mut h = Harness::new();
        let mut found = h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        found.extend(h.feed(ev(EventKind::ResetReceived, 1, 10, SS, SS, 0)));
        found.extend(h.feed(ev(
            EventKind::StateChange,
            1,
            11,
            SS,
            CL,
            libc::ECONNREFUSED,
        )));
        found.extend(h.feed(ev(
            EventKind::SocketError,
            1,
            12,
            CL,
            CL,
            libc::ECONNREFUSED,
        )));
        assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
        let f = &found[0];
        assert_eq!(f.dst, "10.0.0.2:7337".parse().unwrap());
        assert_eq!(f.owner.as_ref().unwrap().comm, "java");
        assert!(f.remedy.contains("7337"));
        assert_eq!(f.evidence.len(), 2, "the connect and the RST");
        assert_eq!(f.first_ns, 0);
    }

    #[test]
    fn error_report_before_the_reset_still_gives_one_finding() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        let mut found = h.feed(ev(EventKind::SocketError, 1, 5, SS, SS, libc::ECONNREFUSED));
        found.extend(h.feed(ev(EventKind::ResetReceived, 1, 6, SS, SS, 0)));
        assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
    }

    #[test]
    fn lost_reset_is_recovered_from_the_close_error() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        let found = h.feed(ev(EventKind::StateChange, 1, 5, SS, CL, libc::ECONNREFUSED));
        assert_eq!(kinds(&found), vec![FindingKind::ConnectRefused]);
    }

    #[test]
    fn an_error_already_consumed_is_no_verdict() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        assert!(
            h.feed(ev(EventKind::SocketError, 1, 5, SS, SS, 0))
                .is_empty()
        );
    }

    #[test]
    fn timeout_then_etimedout_is_a_finding_and_one_update() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        let first = h.feed(ev(EventKind::Retransmit, 1, SEC, SS, SS, 0));
        assert_eq!(kinds(&first), vec![FindingKind::ConnectTimeout]);
        assert!(
            h.feed(ev(EventKind::Retransmit, 1, 3 * SEC, SS, SS, 0))
                .is_empty()
        );
        let mut updates = h.feed(ev(
            EventKind::StateChange,
            1,
            7 * SEC,
            SS,
            CL,
            libc::ETIMEDOUT,
        ));
        updates.extend(h.feed(ev(
            EventKind::SocketError,
            1,
            7 * SEC,
            CL,
            CL,
            libc::ETIMEDOUT,
        )));
        updates.extend(h.end_all(20 * SEC));
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert_eq!(updates[0].update_of, Some(first[0].id));
        assert_eq!(updates[0].count, 0);
        assert!(updates[0].summary.contains("ETIMEDOUT") && updates[0].summary.contains("2 SYN"));
    }

    #[test]
    fn timeout_closed_by_the_application_is_updated_when_the_flow_ends() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        let first = h.feed(ev(EventKind::Retransmit, 1, SEC, SS, SS, 0));
        assert!(
            h.feed(ev(EventKind::StateChange, 1, 2 * SEC, SS, CL, 0))
                .is_empty()
        );
        let updates = h.end_all(10 * SEC);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].update_of, Some(first[0].id));
        assert!(updates[0].summary.contains("application gave up"));
    }

    #[test]
    fn icmp_error_beats_the_syn_retry() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, CL, SS, 0));
        let mut retry = ev(EventKind::Retransmit, 1, SEC, SS, SS, libc::EHOSTUNREACH);
        retry.soft_error = true;
        let found = h.feed(retry);
        assert_eq!(kinds(&found), vec![FindingKind::HostUnreachable]);
        assert!(
            h.feed(ev(EventKind::Retransmit, 1, 3 * SEC, SS, SS, 0))
                .is_empty()
        );
        assert!(
            h.feed(ev(
                EventKind::StateChange,
                1,
                4 * SEC,
                SS,
                CL,
                libc::EHOSTUNREACH
            ))
            .is_empty()
        );
    }

    #[test]
    fn reset_with_another_ttl_is_a_middlebox() {
        let mut h = Harness::new();
        h.feed(ev(EventKind::StateChange, 1, 0, SS, ES, 0));
        let mut rst = ev(EventKind::ResetReceived, 1, 5, ES, ES, 0);
        rst.ttl = Some(64);
        rst.peer_ttl = Some(61);
        let found = h.feed(rst);
        assert_eq!(kinds(&found), vec![FindingKind::MiddleboxReset]);
        assert!(found[0].summary.contains("TTL 64") && found[0].summary.contains("TTL 61"));
        let mut h = Harness::new();
        let mut rst = ev(EventKind::ResetReceived, 2, 5, ES, ES, 0);
        rst.ttl = Some(61);
        rst.peer_ttl = Some(61);
        assert_eq!(kinds(&h.feed(rst)), vec![FindingKind::PeerReset]);
        let mut rst = ev(EventKind::ResetReceived, 3, 5, ES, ES, 0);
        rst.ttl = Some(64); // peer TTL unknown: cannot tell, the peer is presumed
        assert_eq!(kinds(&h.feed(rst)), vec![FindingKind::PeerReset]);
    }

    #[test]
    fn storms_need_the_threshold_within_the_window_and_report_once_per_window() {
        let mut h = Harness::new();
        let mut found = Vec::new();
        // Four retransmits: below the threshold.
        for i in 0..4 {
            found.extend(h.feed(ev(EventKind::Retransmit, 1, i * SEC, ES, ES, 0)));
        }
        assert!(found.is_empty());
        // Slow ones spread over minutes never make a storm.
        let mut slow = Harness::new();
        for i in 0..20 {
            assert!(
                slow.feed(ev(EventKind::Retransmit, 9, i * 30 * SEC, ES, ES, 0))
                    .is_empty()
            );
        }
        found.extend(h.feed(ev(EventKind::Retransmit, 1, 4 * SEC, ES, ES, 0)));
        assert_eq!(kinds(&found), vec![FindingKind::RetransmitStorm]);
        for i in 5..12 {
            assert!(
                h.feed(ev(EventKind::Retransmit, 1, i * SEC, ES, ES, 0))
                    .is_empty()
            );
        }
        let again = h.feed(ev(EventKind::Retransmit, 1, 15 * SEC, ES, ES, 0));
        assert_eq!(kinds(&again), vec![FindingKind::RetransmitStorm]);
    }

    #[test]
    fn synack_retransmits_are_a_blocked_return_path_once() {
        let mut h = Harness::new();
        let synack = |ns| {
            let mut e = ev(EventKind::SynackRetransmit, 7, ns, 12, 12, 0);
            e.side = Some(Side::Server);
            e.local = "10.0.0.2:10000".parse().unwrap();
            e.remote = "10.0.0.1:40000".parse().unwrap();
            e
        };
        assert!(h.feed(synack(SEC)).is_empty());
        let found = h.feed(synack(3 * SEC));
        assert_eq!(kinds(&found), vec![FindingKind::ReturnPathBlocked]);
        assert_eq!(found[0].src, "10.0.0.2:10000".parse().unwrap());
        assert!(h.feed(synack(7 * SEC)).is_empty());
    }

    #[test]
    fn reset_without_a_socket_is_a_local_reset() {
        let mut h = Harness::new();
        let mut rst = ev(EventKind::ResetSent, 0, 5, CL, CL, 1);
        rst.no_socket = true;
        rst.owner = None;
        let found = h.feed(rst);
        assert_eq!(kinds(&found), vec![FindingKind::LocalReset]);
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(found[0].summary.contains("NO_SOCKET"));
    }

    #[test]
    fn reset_without_a_socket_on_a_kernel_without_reasons_says_nothing_listens() {
        // Linux 6.1: the kfree_skb program reports it with no reason number.
        let mut h = Harness::new();
        h.correlator.reasons = ResetReasons::default();
        let mut rst = ev(EventKind::ResetSent, 0, 5, CL, CL, 0);
        rst.no_socket = true;
        rst.owner = None;
        rst.local = "10.0.0.2:7337".parse().unwrap();
        let found = h.feed(rst);
        assert_eq!(kinds(&found), vec![FindingKind::LocalReset]);
        assert!(
            found[0].summary.contains("nothing listens on port 7337"),
            "{}",
            found[0].summary
        );
        assert!(
            found[0].remedy.contains("nothing listens"),
            "{}",
            found[0].remedy
        );
    }

    fn refused(h: &mut Harness, cookie: u64, ns: u64) -> Finding {
        h.feed(ev(EventKind::StateChange, cookie, ns, CL, SS, 0));
        h.feed(ev(EventKind::ResetReceived, cookie, ns, SS, SS, 0))
            .remove(0)
    }

    #[test]
    fn a_storm_of_identical_findings_is_one_line_plus_one_aggregate_with_the_exact_count() {
        let mut h = Harness::new();
        let mut agg = Aggregator::new(10 * SEC, 1024);
        let mut printed = Vec::new();
        let mut folded = 0;
        for i in 0..1000u64 {
            let (lines, id) = agg.offer(refused(&mut h, i + 1, i * 1_000_000));
            printed.extend(lines);
            folded += u64::from(id.is_some());
        }
        assert_eq!(printed.len(), 1);
        assert_eq!(folded, 999);
        assert!(agg.due(5 * SEC).is_empty(), "window still open");
        let aggregate = agg.due(11 * SEC);
        assert_eq!(aggregate.len(), 1);
        assert_eq!(aggregate[0].count, 999);
        assert_eq!(printed[0].count + aggregate[0].count, 1000);
        assert!(aggregate[0].summary.contains("999 more times"));
        assert!(agg.flush().is_empty());
    }

    #[test]
    fn different_destinations_or_processes_are_not_folded() {
        let mut h = Harness::new();
        let mut agg = Aggregator::new(10 * SEC, 1024);
        let a = refused(&mut h, 1, 0);
        let mut b = refused(&mut h, 2, 1);
        b.dst = "10.0.0.3:7337".parse().unwrap();
        let mut c = refused(&mut h, 3, 2);
        c.owner.as_mut().unwrap().pid = 43;
        for f in [a, b, c] {
            let (lines, folded) = agg.offer(f);
            assert_eq!(lines.len(), 1);
            assert!(folded.is_none());
        }
    }

    #[test]
    fn a_full_aggregator_flushes_early_and_loses_nothing() {
        let mut h = Harness::new();
        let mut agg = Aggregator::new(10 * SEC, 2);
        let mut total = 0;
        for round in 0..3u64 {
            for port in 0..3u16 {
                let mut f = refused(&mut h, u64::from(port) * 10 + round + 1, round);
                f.dst.set_port(7000 + port);
                let (lines, _) = agg.offer(f);
                total += lines.iter().map(|l| l.count).sum::<u64>();
            }
        }
        total += agg.flush().iter().map(|l| l.count).sum::<u64>();
        assert_eq!(total, 9);
    }

    #[test]
    fn a_finding_after_the_window_flushes_the_aggregate_then_prints() {
        let mut h = Harness::new();
        let mut agg = Aggregator::new(10 * SEC, 16);
        agg.offer(refused(&mut h, 1, 0));
        agg.offer(refused(&mut h, 2, SEC));
        let (lines, folded) = agg.offer(refused(&mut h, 3, 20 * SEC));
        assert!(folded.is_none());
        assert_eq!(
            lines.iter().map(|l| l.count).collect::<Vec<_>>(),
            vec![1, 1]
        );
        assert!(lines[0].summary.contains("Once more"));
    }
}
