//! TLS mismatches (`tls_mismatch`): a ClientHello answered without TLS, plaintext answered with
//! TLS, and a sidecar's mismatch linked to the application connection it intercepted, with
//! its own state (recent client connections, findings waiting for the application's outcome).

use std::{collections::VecDeque, net::SocketAddr};

use tracer_ebpf::tcp_state;

use super::*;
use crate::events::{Event, EventKind, Owner, payload_class_name};

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

/// Istio's proxy uid.
const ISTIO_PROXY_UID: u32 = 1337;

fn is_sidecar(owner: Option<&Owner>) -> bool {
    owner.is_some_and(|o| {
        o.uid == ISTIO_PROXY_UID || o.comm == "envoy" || o.process_name() == "envoy"
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
    pub(super) fn check_tls(&mut self, event: &Event, flow: &mut Flow) {
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
            Some(o) if sidecar => format!("the sidecar ({} uid {})", o.process_name(), o.uid),
            Some(o) => format!("{} (pid {})", o.process_name(), o.pid),
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
