//! Connect and reset verdicts: refused, unreachable, and who sent a RST (the peer, a device
//! in between, or this host).

use tracer_ebpf::tcp_state;

use super::*;
use crate::events::{Event, Side, errno_name, tcp_state_name};

impl Correlator {
    pub(super) fn reset_received(
        &mut self,
        event: &Event,
        flow: &mut Flow,
        out: &mut Vec<Finding>,
    ) {
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
            f.remedy = remedies::peer_reset(event.local, event.remote, flow.side);
            f
        };
        finding.evidence = flow.track.evidence.clone();
        finding.first_ns = flow.first_ns;
        out.push(finding);
    }

    pub(super) fn socket_error(&mut self, event: &Event, flow: &mut Flow, out: &mut Vec<Finding>) {
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
                // The state the error found the socket in: a CLOSE transition carries it as
                // the old state.
                let state = if event.kind == EventKind::StateChange {
                    event.old_state
                } else {
                    event.new_state
                };
                let attempt = state == tcp_state::SYN_SENT
                    || (state == tcp_state::CLOSE && flow.track.syn_retransmits > 0);
                let how = if attempt {
                    "the connection attempt".to_owned()
                } else if state == tcp_state::CLOSE {
                    "the connection".to_owned()
                } else {
                    format!("the connection while it was {}", tcp_state_name(state))
                };
                f.summary = format!(
                    "{} is unreachable: an ICMP error ({error}) ended {how}.",
                    event.remote
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

    pub(super) fn local_reset(&mut self, event: &Event, evidence: &[Event]) -> Finding {
        // Only a RST answering a SYN says nothing listens; one answering a late segment of a
        // connection already gone here (a FIN, ACK or data after it closed, or after its
        // state was lost in a NAT) says that, whatever the kernel's reason name (6.10+ says
        // NO_SOCKET for both).
        let nothing_listens = event.no_socket && event.answers_syn;
        // A listening socket never answers a SYN with a RST: its RST answers a stray segment.
        let stray = (event.no_socket && !event.answers_syn) || event.new_state == tcp_state::LISTEN;
        let reason = if stray {
            remedies::NO_CONNECTION
        } else {
            match self.reasons.of_reset(event) {
                Some(reason) => reason,
                // Before 6.2 the kernel gives no reason; a socket that sends a RST as it
                // closes is aborted by its application (closed with unread data, or
                // SO_LINGER 0): both move it to CLOSE first.
                None if !event.no_socket && event.new_state == tcp_state::CLOSE => remedies::ABORT,
                None => "NOT_SPECIFIED",
            }
        }
        .to_owned();
        let severity = if nothing_listens {
            Severity::Warning
        } else {
            Severity::Info
        };
        let mut f = self.finding(FindingKind::LocalReset, severity, event);
        if nothing_listens {
            f.side = Some(Side::Server);
        }
        f.summary = format!(
            "This host sent a RST to {} from {}: {}.",
            event.remote,
            event.local,
            remedies::reset_reason_meaning(&reason, event.local.port())
        );
        f.remedy = remedies::local_reset(
            &reason,
            event.local,
            event.remote,
            event.side,
            event
                .owner
                .as_ref()
                .map(|o| format!("{} (pid {})", o.process_name(), o.pid)),
        );
        f.evidence = if evidence.is_empty() {
            vec![event.clone()]
        } else {
            evidence.to_vec()
        };
        f
    }
}
