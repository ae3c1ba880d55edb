//! Both ends of a connection on this host (two pods of one node, a sidecar and its
//! application, loopback): a RST is then seen twice, sent by one end and received by the
//! other, and each end alone would give its own verdict for the one incident. The sender's
//! `local_reset` is held for a moment; when the receiver's verdict follows, the two become
//! one finding, told from the side that explains it, with the other end as its `peer`:
//!
//! - a refused connect (a RST answering a SYN, nothing listens): the client's
//!   `connect_refused`, naming the namespace where nothing listens;
//! - a client that aborted (closed with unread data, SO_LINGER 0): the client's own
//!   `local_reset`, info: it is not the server's failure;
//! - a server that aborted: its `local_reset`, a warning: the client's connection failed,
//!   and the server chose it;
//! - a server that reset a TLS handshake it could not read, or a sidecar's upstream
//!   connection that failed: the `tls_mismatch`, which explains both the server's RST and
//!   the reset its intercepted application saw.
//!
//! A held finding with no counterpart is published unchanged when its moment ends.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use super::{Finding, FindingKind, MAX_EVIDENCE, Severity};
use crate::events::{Owner, Side, k8s::PodRef};

/// How long a RST's finding waits for the other end's: both are reported within
/// microseconds of each other, and a sidecar's tls_mismatch within `tls`'s settle time (300
/// ms); the rest is collection latency (the ring buffer is read every 50 ms).
pub const JOIN_WINDOW_NS: u64 = 500_000_000;
/// Most findings held at once; past it the oldest is published without waiting.
const MAX_HELD: usize = 4096;

/// The other end of the connection, when it is on this host too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEnd {
    pub addr: SocketAddr,
    pub netns: u32,
    pub owner: Option<Owner>,
    pub pod: Option<Arc<PodRef>>,
    pub side: Option<Side>,
}

impl PeerEnd {
    fn of(finding: &Finding) -> Self {
        Self {
            addr: finding.src,
            netns: finding.netns,
            owner: finding.owner.clone(),
            pod: finding.pod.clone(),
            side: finding.side,
        }
    }

    /// `python3 (pid 4242) in network namespace 4026532 (pod spark/exec-1)`.
    pub fn describe(&self) -> String {
        let who = match &self.owner {
            Some(owner) => format!("{} (pid {})", owner.process_name(), owner.pid),
            None => "the end (process unknown)".to_owned(),
        };
        let pod = self
            .pod
            .as_ref()
            .map(|pod| format!(" (pod {}/{})", pod.namespace, pod.pod))
            .unwrap_or_default();
        format!("{who} in network namespace {}{pod}", self.netns)
    }
}

struct Held {
    finding: Finding,
    until_ns: u64,
    /// Both ends' findings already made this one: it waits out its moment only to take in
    /// further RSTs between the same two ends (a listener answering the client's last ACK).
    joined: bool,
}

/// The same two endpoints, either way round.
fn same_ends(a: &Finding, b: &Finding) -> bool {
    (a.src == b.src && a.dst == b.dst) || (a.src == b.dst && a.dst == b.src)
}

/// The join stage, between the correlator and the aggregator. Bounded by `MAX_HELD`.
#[derive(Default)]
pub struct Joiner {
    held: VecDeque<Held>,
}

/// A RST this host sent without a socket, answering a SYN: nothing listens.
fn is_refusal(sent: &Finding) -> bool {
    sent.evidence
        .first()
        .is_some_and(|event| event.no_socket && event.answers_syn)
}

/// Whether `received` is the other end's verdict on the RST `sent` reported.
fn joins(sent: &Finding, received: &Finding) -> bool {
    // Loopback addresses repeat in every namespace; a loopback RST stays in its own.
    let same_place = |addr: SocketAddr| !addr.ip().is_loopback() || sent.netns == received.netns;
    if is_refusal(sent) {
        // The client's port is not compared: storms of refusals are counted per client
        // address and service (see `tracer_ebpf::RepeatKey`), and so are their findings.
        received.kind == FindingKind::ConnectRefused
            && received.src.ip() == sent.dst.ip()
            && received.dst == sent.src
            && same_place(sent.dst)
    } else {
        // By the receiving end alone: a NAT in front of the sender (a sidecar's redirect,
        // a service address) changes the address the receiver connected to, not its own.
        matches!(
            received.kind,
            FindingKind::PeerReset | FindingKind::MiddleboxReset
        ) && received.src == sent.dst
            && same_place(sent.dst)
    }
}

/// One finding of the two.
fn merge(sent: Finding, received: Finding) -> Finding {
    if is_refusal(&sent) {
        let mut joined = received;
        joined.summary = format!(
            "{} The RST came from this host: nothing listens on port {} in network namespace \
             {}{}.",
            joined.summary,
            sent.src.port(),
            sent.netns,
            sent.pod
                .as_ref()
                .map(|pod| format!(" (pod {}/{})", pod.namespace, pod.pod))
                .unwrap_or_default()
        );
        joined.peer = Some(PeerEnd {
            side: Some(Side::Server),
            ..PeerEnd::of(&sent)
        });
        add_evidence(&mut joined, &sent);
        return joined;
    }
    let receiver = PeerEnd::of(&received);
    // The sender's side, else the opposite of the receiver's.
    let sender_side = sent.side.or(match received.side {
        Some(Side::Client) => Some(Side::Server),
        Some(Side::Server) => Some(Side::Client),
        None => None,
    });
    let mut joined = sent;
    joined.side = sender_side;
    // Which end ended it decides the severity; with neither side known, nothing is claimed
    // and the sender's own severity stands.
    let consequence = match sender_side {
        Some(Side::Client) => {
            joined.severity = Severity::Info;
            "; it was the client's own doing, not a failure of the server"
        }
        Some(Side::Server) => {
            joined.severity = Severity::Warning;
            "; the client's connection failed because this end ended it"
        }
        None => "",
    };
    joined.summary = format!(
        "{} The other end is on this host too: {} saw the reset{consequence}.",
        joined.summary,
        receiver.describe()
    );
    joined.peer = Some(receiver);
    add_evidence(&mut joined, &received);
    joined
}

/// Both ends' events, in time order: each end's are bounded by `MAX_EVIDENCE` (its first
/// ones and its latest, the one that gave its verdict), so a joined finding has at most twice
/// that.
fn add_evidence(joined: &mut Finding, other: &Finding) {
    for event in &other.evidence {
        if joined.evidence.len() >= 2 * MAX_EVIDENCE {
            break;
        }
        if !joined.evidence.contains(event) {
            joined.evidence.push(event.clone());
        }
    }
    joined.evidence.sort_by_key(|event| event.boot_ns);
}

/// Takes `reset` into `tls` when the mismatch explains it: the server's RST answering the
/// handshake it could not read (sent to the mismatching connection's end: that server is
/// the peer), or the reset the sidecar's intercepted application saw. True when taken.
fn absorb(tls: &mut Finding, reset: &Finding) -> bool {
    if tls.kind != FindingKind::TlsMismatch {
        return false;
    }
    let app = tls
        .tls
        .as_ref()
        .and_then(|detail| detail.intercepted.as_ref())
        .map(|app| app.src);
    let sent_to_it = reset.kind == FindingKind::LocalReset
        && reset.dst == tls.src
        && (!tls.src.ip().is_loopback() || reset.netns == tls.netns);
    let seen_by_app = matches!(
        reset.kind,
        FindingKind::PeerReset | FindingKind::MiddleboxReset
    ) && Some(reset.src) == app
        && reset.netns == tls.netns;
    if sent_to_it {
        tls.peer = Some(PeerEnd::of(reset));
    }
    if sent_to_it || seen_by_app {
        add_evidence(tls, reset);
    }
    sent_to_it || seen_by_app
}

impl Joiner {
    /// Takes one finding; what is ready to publish goes to `out`. Either end's finding can
    /// come first: the kernel reports a RST sent over loopback after the receiver has
    /// already handled it.
    pub fn offer(&mut self, mut finding: Finding, out: &mut Vec<Finding>) {
        let joinable = matches!(
            finding.kind,
            FindingKind::LocalReset
                | FindingKind::ConnectRefused
                | FindingKind::PeerReset
                | FindingKind::MiddleboxReset
                | FindingKind::TlsMismatch
        );
        if !joinable || finding.update_of.is_some() {
            out.push(finding);
            return;
        }
        if finding.kind == FindingKind::TlsMismatch {
            // It takes in the resets it explains, now and while it is held.
            let held = std::mem::take(&mut self.held);
            for other in held {
                if !absorb(&mut finding, &other.finding) {
                    self.held.push_back(other);
                }
            }
        } else if self
            .held
            .iter_mut()
            .any(|held| absorb(&mut held.finding, &finding))
        {
            return;
        } else if let Some(incident) = self
            .held
            .iter_mut()
            .find(|held| held.joined && same_ends(&held.finding, &finding))
        {
            // A further RST between the two ends of an incident already joined.
            add_evidence(&mut incident.finding, &finding);
            return;
        } else {
            let sends = finding.kind == FindingKind::LocalReset;
            let counterpart = self.held.iter().position(|held| {
                if held.joined {
                    false
                } else if sends {
                    joins(&finding, &held.finding)
                } else {
                    joins(&held.finding, &finding)
                }
            });
            if let Some(other) = counterpart.and_then(|at| self.held.remove(at)) {
                let until_ns = other.until_ns;
                let joined = if sends {
                    merge(finding, other.finding)
                } else {
                    merge(other.finding, finding)
                };
                self.hold(joined, until_ns, true, out);
                return;
            }
        }
        let until_ns = finding.boot_ns.saturating_add(JOIN_WINDOW_NS);
        self.hold(finding, until_ns, false, out);
    }

    /// Holds a finding until `until_ns`; past `MAX_HELD` the oldest goes out at once.
    fn hold(&mut self, finding: Finding, until_ns: u64, joined: bool, out: &mut Vec<Finding>) {
        if self.held.len() >= MAX_HELD
            && let Some(oldest) = self.held.pop_front()
        {
            out.push(oldest.finding);
        }
        self.held.push_back(Held {
            finding,
            until_ns,
            joined,
        });
    }

    /// Publishes the held findings whose moment has passed.
    pub fn due(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        while self
            .held
            .front()
            .is_some_and(|held| held.until_ns <= now_ns)
        {
            out.extend(self.held.pop_front().map(|held| held.finding));
        }
    }

    /// Publishes everything held (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        out.extend(self.held.drain(..).map(|held| held.finding));
    }
}

#[cfg(test)]
mod tests;
