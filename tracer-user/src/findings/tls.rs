//! TLS mismatches (`tls_mismatch`): a ClientHello answered without TLS, plaintext answered with
//! TLS or closed on without a byte by a server known to speak TLS (see `tls_ports`), each with
//! how sure it is and why; and a sidecar's mismatch linked to the application connection it
//! intercepted, with its own state (recent client connections, findings waiting for the
//! application's outcome).

use std::{collections::VecDeque, net::SocketAddr};

use tracer_ebpf::{FlowActivity, tcp_state};

use super::tls_ports::{span, tls_answer, tls_class_text};
use super::*;
use crate::events::{Event, EventKind, Owner, Side, payload_class_name};

/// A recent client connection, kept to find the one a sidecar intercepted.
#[derive(Clone, Debug)]
pub(super) struct AppConnection {
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

/// A server that rejects a request it cannot parse as TLS does so at once (OpenSSL and
/// Python's ssl within milliseconds, Netty's SslHandler under Spark RPC in about 60 ms); a
/// silent close later than this after the request is a read or idle timeout, not that.
const SILENT_REJECTION_NS: u64 = 5_000_000_000;

/// What a tls_mismatch says: which way, what came back, and how sure it is and why.
struct Verdict {
    direction: &'static str,
    answer: String,
    confidence: Confidence,
    basis: String,
}

/// Istio's proxy uid.
const ISTIO_PROXY_UID: u32 = 1337;

fn is_sidecar(owner: Option<&Owner>) -> bool {
    owner.is_some_and(|o| {
        o.uid == ISTIO_PROXY_UID || &*o.comm == "envoy" || o.process_name() == "envoy"
    })
}

/// The sidecar-linking state: recent client connections (bounded) and tls_mismatch findings
/// waiting for the intercepted application's outcome.
#[derive(Default)]
pub(super) struct Sidecars {
    pub(super) recent: VecDeque<AppConnection>,
    pub(super) pending: Vec<(u64, Finding)>,
}

impl Correlator {
    /// Remembers client connections (to link a sidecar's connection to the application's it
    /// intercepted) and what happened to them.
    pub(super) fn note_connection(&mut self, event: &Event, flow: &mut Flow) {
        // Only flows that were remembered are looked up, newest first: the list is searched
        // for every event of a client flow, and this keeps that O(1) in practice.
        let known = if flow.track.remembered {
            self.sidecars
                .recent
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
    pub(super) fn remember_connection(&mut self, connection: AppConnection) {
        if self.sidecars.recent.len() >= RECENT_CONNECTIONS {
            self.sidecars.recent.pop_front();
        }
        self.sidecars.recent.push_back(connection);
    }

    /// A clean flow the kernel kept quiet and summarised: what it spoke marks TLS servers;
    /// a client flow is remembered for sidecar linking like the connections reported event
    /// by event (a sidecar that fails upstream may close the application's connection
    /// cleanly).
    pub fn note_summary(&mut self, event: &Event) {
        let server = event
            .owner
            .as_ref()
            .filter(|_| event.side == Some(Side::Server));
        let ends = (event.local, event.remote);
        self.learn_tls(event.netns, ends, event.classes, event.boot_ns, server);
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

    /// Learns TLS servers from what a flow's first payloads were: a TLS answer received
    /// makes the peer one, one sent makes this host's end one (`server`: its process).
    fn learn_tls(
        &mut self,
        netns: u32,
        (local, remote): (SocketAddr, SocketAddr),
        (tx, rx): (u8, u8),
        at_ns: u64,
        server: Option<&Owner>,
    ) {
        if tls_answer(rx) {
            self.tls_ports.learn(netns, remote, rx, at_ns, None);
        }
        if tls_answer(tx) {
            self.tls_ports.learn(netns, local, tx, at_ns, server);
        }
    }

    /// An open flow in the kernel's activity table (read at each idle scan): long-lived TLS
    /// connections (Spark RPC keeps its own) mark their server before they ever close.
    pub fn note_activity(&mut self, activity: &FlowActivity, now_ns: u64) {
        if !tls_answer(activity.tx_class) && !tls_answer(activity.rx_class) {
            return;
        }
        if let Some(ends) = crate::events::activity_ends(activity) {
            let classes = (activity.tx_class, activity.rx_class);
            self.learn_tls(activity.netns, ends, classes, now_ns, None);
        }
    }

    /// A TLS ClientHello answered without TLS, plaintext answered with TLS, or plaintext a
    /// server known to speak TLS closed or reset without a byte.
    pub(super) fn check_tls(&mut self, event: &Event, flow: &mut Flow) {
        use tracer_ebpf::payload_class::{NONE, TLS_CLIENT_HELLO, is_tls};
        if event.kind == EventKind::FirstPayload {
            let server = flow
                .owner
                .as_ref()
                .filter(|_| flow.side == Some(Side::Server));
            let (ends, classes) = ((flow.local, flow.remote), (flow.tx_class, flow.rx_class));
            self.learn_tls(flow.netns, ends, classes, event.boot_ns, server);
        }
        if flow.track.tls_reported || flow.tx_class == NONE {
            return;
        }
        // A RST from a device in between (another TTL than the peer's) is not the peer's
        // answer: it is a middlebox_reset.
        let forged = matches!((event.ttl, event.peer_ttl), (Some(rst), Some(peer)) if rst != peer);
        let peer_ended = match event.kind {
            EventKind::ResetReceived if !forged => Some("reset the connection"),
            EventKind::StateChange if event.new_state == tcp_state::CLOSE_WAIT => {
                Some("closed the connection")
            }
            _ => None,
        };
        let answered = event.kind == EventKind::FirstPayload && event.received;
        let (rx, peer) = (flow.rx_class, flow.remote);
        let verdict = if flow.tx_class == TLS_CLIENT_HELLO {
            match (answered, peer_ended) {
                (true, _) if !is_tls(rx) => Verdict {
                    direction: "tls_to_plaintext",
                    answer: format!("answered with {}", payload_class_name(rx)),
                    confidence: Confidence::Certain,
                    basis: format!(
                        "{peer} answered the ClientHello with {}, not TLS",
                        payload_class_name(rx)
                    ),
                },
                (false, Some(how)) if rx == NONE => Verdict {
                    direction: "tls_to_plaintext",
                    answer: format!("{how} without a TLS record"),
                    confidence: Confidence::Likely,
                    basis: format!(
                        "{peer} ended the connection on the ClientHello without a byte, where a \
                         TLS server answers with a ServerHello or an alert"
                    ),
                },
                _ => return,
            }
        } else if is_tls(flow.tx_class) {
            return;
        } else if answered && is_tls(rx) {
            Verdict {
                direction: "plaintext_to_tls",
                answer: format!("answered with {}", payload_class_name(rx)),
                confidence: Confidence::Certain,
                basis: format!(
                    "{peer} answered this connection with {}",
                    tls_class_text(rx)
                ),
            }
        } else if let Some(how) = peer_ended
            && rx == NONE
            && flow.side != Some(Side::Server)
            && let Some(verdict) = self.silent_tls(event, flow, how)
        {
            verdict
        } else {
            return;
        };
        self.tls_mismatch(event, flow, verdict);
    }

    /// Plaintext a server closed or reset without a byte: a TLS mismatch when the server is
    /// known to speak TLS and it ended the connection at once (a TLS server rejects a
    /// request it cannot parse as a record right away; one that waited is a timeout).
    fn silent_tls(&self, event: &Event, flow: &Flow, how: &str) -> Option<Verdict> {
        let sent_ns = flow
            .track
            .evidence
            .iter()
            .find(|e| e.kind == EventKind::FirstPayload && !e.received)
            .map_or(flow.first_ns, |e| e.boot_ns);
        let after_ns = event.boot_ns.saturating_sub(sent_ns);
        if after_ns > SILENT_REJECTION_NS {
            return None;
        }
        let basis = self.tls_ports.basis(flow.netns, flow.remote, sent_ns)?;
        Some(Verdict {
            direction: "plaintext_to_tls",
            answer: format!("{how} without a byte, {} after the request", span(after_ns)),
            confidence: Confidence::Likely,
            basis,
        })
    }

    /// The tls_mismatch of a flow, held back a moment for the sidecar's application outcome.
    fn tls_mismatch(&mut self, event: &Event, flow: &mut Flow, verdict: Verdict) {
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
            Some(o) if sidecar => format!("the sidecar ({} uid {})", o.process_name(), o.uid),
            Some(o) => format!("{} (pid {})", o.process_name(), o.pid),
            None => "this host".to_owned(),
        };
        let Verdict {
            direction,
            answer,
            confidence,
            basis,
        } = verdict;
        f.summary = match (direction, confidence) {
            ("tls_to_plaintext", _) => format!(
                "{who} sent a TLS ClientHello to {}, which does not speak TLS: it {answer}.",
                flow.remote
            ),
            (_, Confidence::Certain) => format!(
                "{who} sent plaintext ({sent}) to {}, which speaks TLS: it {answer}.",
                flow.remote
            ),
            (_, Confidence::Likely) => format!(
                "{who} sent plaintext ({sent}) to {}, which likely speaks TLS: it {answer}. TLS, \
                 because {basis}.",
                flow.remote
            ),
        };
        f.remedy = remedies::tls_mismatch(flow.remote, direction, sidecar, &who);
        f.tls = Some(TlsDetail {
            direction,
            sidecar,
            sent,
            answer,
            confidence,
            basis,
            intercepted: None,
        });
        self.sidecars
            .pending
            .push((event.boot_ns + TLS_SETTLE_NS, f));
    }

    /// Writes the tls_mismatch findings whose wait for the application's outcome is over
    /// (all of them when `now_ns` is u64::MAX, at shutdown).
    pub fn due_tls(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sidecars.pending)
            .into_iter()
            .partition(|(at, _)| *at <= now_ns);
        self.sidecars.pending = waiting;
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
                            .map_or("an application".to_owned(), |o| o.process_name()),
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
    pub(super) fn intercepted(&self, sidecar: &Finding) -> Option<Intercepted> {
        self.sidecars
            .recent
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
}
