//! The ladder of a finding group: its evidence events turned into packets between the client
//! and the server (and a middlebox, when a RST's TTL says one sent it), in time order, with
//! who sent each one and the TTLs that prove it, and the silences between them. One model,
//! drawn twice: as SVG in the HTML report (`svg`) and as a Mermaid `sequenceDiagram` in the
//! Markdown (`mermaid`), so the two never tell different stories.

use std::time::SystemTime;

use serde_json::Value;

use super::{Group, build::text};

/// A silence at least this long between two events is drawn as a gap.
const GAP_NS: u128 = 1_000_000_000;

/// A column of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Client,
    /// Only present when a RST arrived with another TTL than the peer's own packets.
    Middlebox,
    Server,
}

/// What happened at one step, at one time.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A packet from one column to another.
    Packet {
        from: Column,
        to: Column,
        /// The packet: `SYN`, `RST (NO_SOCKET)`, `first data: tls_client_hello`...
        label: String,
        /// Who sent it and how we know: `sent by the client`, `TTL 64, but the server's
        /// packets arrive with TTL 61: a middlebox sent it`.
        sender: String,
        /// A retransmission (the first copy went unanswered).
        retransmit: bool,
        /// A RST: the connection ends here.
        reset: bool,
    },
    /// Something one end saw that is no packet: a state change, a socket error.
    Mark { at: Column, label: String },
    /// No packet either way for a while.
    Gap { label: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Time since the first event, `+1.003 s` (empty when a timestamp does not parse).
    pub offset: String,
    pub ts: String,
    pub what: What,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ladder {
    /// The two ends' addresses.
    pub client: String,
    pub server: String,
    pub middlebox: bool,
    pub steps: Vec<Step>,
}

fn nanos(ts: &str) -> Option<u128> {
    let time = humantime::parse_rfc3339_weak(ts).ok()?;
    Some(time.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos())
}

fn seconds(ns: u128) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn end_name(column: Column) -> &'static str {
    match column {
        Column::Client => "client",
        Column::Middlebox => "middlebox",
        Column::Server => "server",
    }
}

fn other(column: Column) -> Column {
    if column == Column::Server {
        Column::Client
    } else {
        Column::Server
    }
}

/// A received RST: the peer's own, or a middlebox's (its TTL is not the peer's).
fn reset_received(e: &Value, observer: Column) -> What {
    let peer = other(observer);
    let (from, sender) = match (e["ttl"].as_u64(), e["peer_ttl"].as_u64()) {
        (Some(ttl), Some(peer_ttl)) if ttl != peer_ttl => (
            Column::Middlebox,
            format!(
                "TTL {ttl}, but the {}'s packets arrive with TTL {peer_ttl}: a middlebox sent it",
                end_name(peer)
            ),
        ),
        (Some(ttl), Some(_)) => (
            peer,
            format!(
                "sent by the {0}: TTL {ttl}, as the {0}'s own packets",
                end_name(peer)
            ),
        ),
        (Some(ttl), None) => (
            peer,
            format!("received by the {} with TTL {ttl}", end_name(observer)),
        ),
        _ => (peer, format!("received by the {}", end_name(observer))),
    };
    What::Packet {
        from,
        to: observer,
        label: "RST".into(),
        sender,
        retransmit: false,
        reset: true,
    }
}

/// One evidence event as seen by `observer`.
fn step(e: &Value, observer: Column) -> What {
    let peer = other(observer);
    let sent = |label: String, retransmit: bool, reset: bool| What::Packet {
        from: observer,
        to: peer,
        label,
        sender: format!("sent by the {}", end_name(observer)),
        retransmit,
        reset,
    };
    let received = |label: &str| What::Packet {
        from: peer,
        to: observer,
        label: label.into(),
        sender: format!("received by the {}", end_name(observer)),
        retransmit: false,
        reset: false,
    };
    let state = text(e, "state");
    if e["cut"].is_string() {
        return What::Mark {
            at: observer,
            label: format!("{}: {}", text(e, "event"), text(e, "cut")),
        };
    }
    match text(e, "event").as_str() {
        "state_change" => match (text(e, "old_state").as_str(), text(e, "new_state").as_str()) {
            (_, "SYN_SENT") => sent("SYN".into(), false, false),
            ("SYN_SENT", "ESTABLISHED") => received("SYN-ACK"),
            ("SYN_RECV", "ESTABLISHED") => received("ACK (handshake done)"),
            ("ESTABLISHED", "FIN_WAIT1") | ("CLOSE_WAIT", "LAST_ACK") => {
                sent("FIN".into(), false, false)
            }
            ("ESTABLISHED", "CLOSE_WAIT") => received("FIN"),
            (old, new) => What::Mark {
                at: observer,
                label: format!("{old} -> {new}"),
            },
        },
        "retransmit" if state == "SYN_SENT" => sent("SYN".into(), true, false),
        "retransmit" => sent(format!("retransmit in {state}"), true, false),
        "synack_retransmit" => sent("SYN-ACK".into(), true, false),
        "reset_sent" => match e["reason"].as_str() {
            Some(_) => sent(format!("RST ({})", text(e, "reason")), false, true),
            None => sent("RST".into(), false, true),
        },
        "reset_received" => reset_received(e, observer),
        "first_payload" => {
            let label = format!("first data: {}", text(e, "class"));
            if e["direction"] == "received" {
                received(&label)
            } else {
                sent(label, false, false)
            }
        }
        "socket_error" => What::Mark {
            at: observer,
            label: format!("socket error {}", text(e, "error")),
        },
        other => What::Mark {
            at: observer,
            label: other.to_owned(),
        },
    }
}

/// The ladder of a group's evidence. The server is the group's endpoint (an event whose own
/// end is the endpoint was seen at the server); the client is the other end.
pub fn ladder(group: &Group) -> Ladder {
    let server = group.endpoint.clone();
    let mut events: Vec<&Value> = group.evidence.iter().collect();
    // A joined finding lists one end's events, then the other's: put them in time order.
    events.sort_by_key(|e| text(e, "ts"));
    let client = events
        .iter()
        .flat_map(|e| [text(e, "src"), text(e, "dst")])
        .find(|address| *address != server && !address.is_empty())
        .unwrap_or_else(|| "-".into());
    let first = events.first().and_then(|e| nanos(&text(e, "ts")));
    let mut steps: Vec<Step> = Vec::new();
    let mut previous: Option<u128> = None;
    // The RST one end's kernel sent (a joined finding has both ends' events): the other
    // end's reception of it is the same packet, drawn once.
    let mut last_reset_sent: Option<(usize, Column, Option<u128>)> = None;
    for e in events {
        let ts = text(e, "ts");
        let at = nanos(&ts);
        if let (Some(before), Some(now)) = (previous, at)
            && now.saturating_sub(before) >= GAP_NS
        {
            steps.push(Step {
                offset: String::new(),
                ts: String::new(),
                what: What::Gap {
                    label: format!("{} without a packet", seconds(now - before)),
                },
            });
        }
        previous = at.or(previous);
        let observer = if text(e, "src") == server {
            Column::Server
        } else {
            Column::Client
        };
        let mut what = step(e, observer);
        if let Some(node) = e["node"].as_str()
            && let What::Packet { sender, .. } | What::Mark { label: sender, .. } = &mut what
        {
            sender.push_str(&format!(" (node {node})"));
        }
        if let What::Packet {
            from,
            reset: true,
            sender,
            ..
        } = &what
        {
            let sent = text(e, "event") == "reset_sent";
            if sent {
                last_reset_sent = Some((steps.len(), *from, at));
            } else if let Some((index, sent_from, sent_at)) = last_reset_sent.take()
                && sent_from == *from
                && matches!((sent_at, at), (Some(a), Some(b)) if b.saturating_sub(a) < GAP_NS)
                && let What::Packet { sender: first, .. } = &mut steps[index].what
            {
                let received = sender.replacen(
                    &format!("sent by the {}: ", end_name(sent_from)),
                    &format!("received by the {}: ", end_name(observer)),
                    1,
                );
                first.push_str(&format!("; {received}"));
                continue;
            }
        }
        steps.push(Step {
            offset: match (first, at) {
                (Some(first), Some(at)) => format!("+{}", seconds(at.saturating_sub(first))),
                _ => String::new(),
            },
            ts,
            what,
        });
    }
    let middlebox = steps.iter().any(|s| {
        matches!(
            s.what,
            What::Packet {
                from: Column::Middlebox,
                ..
            }
        )
    });
    Ladder {
        client,
        server,
        middlebox,
        steps,
    }
}

impl Ladder {
    /// The columns drawn, left to right.
    pub fn columns(&self) -> Vec<(Column, String)> {
        let mut columns = vec![(Column::Client, format!("client {}", self.client))];
        if self.middlebox {
            columns.push((Column::Middlebox, "middlebox".into()));
        }
        columns.push((Column::Server, format!("server {}", self.server)));
        columns
    }
}

/// A group of `evidence` for unit tests (a middlebox_reset of 10.0.0.2:7337).
#[cfg(test)]
pub fn sample_group(evidence: Vec<Value>) -> Group {
    Group {
        kind: "middlebox_reset".into(),
        severity: "error".into(),
        endpoint: "10.0.0.2:7337".into(),
        service: None,
        count: 1,
        lines: 1,
        first_ts: String::new(),
        last_ts: String::new(),
        nodes: vec![],
        nodes_omitted: 0,
        processes: vec![],
        processes_omitted: 0,
        summary: String::new(),
        remedy: String::new(),
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(ts: &str, event: &str, src: &str, dst: &str, extra: Value) -> Value {
        let mut e = json!({"ts": ts, "event": event, "src": src, "dst": dst});
        if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
            e.extend(extra.clone());
        }
        e
    }

    #[test]
    fn a_forged_reset_comes_from_a_middlebox_after_an_idle_gap() {
        let (c, s) = ("10.0.0.1:40000", "10.0.0.2:7337");
        let ladder = ladder(&sample_group(vec![
            // Out of order, as a joined finding lists them; the server's own view is swapped.
            event(
                "2026-11-22T10:05:51.000000000Z",
                "reset_received",
                c,
                s,
                json!({"state": "ESTABLISHED", "ttl": 64, "peer_ttl": 61}),
            ),
            event(
                "2026-11-22T10:00:00.000000000Z",
                "state_change",
                c,
                s,
                json!({"old_state": "CLOSE", "new_state": "SYN_SENT"}),
            ),
            event(
                "2026-11-22T10:00:00.001000000Z",
                "state_change",
                s,
                c,
                json!({"old_state": "SYN_RECV", "new_state": "ESTABLISHED"}),
            ),
            event(
                "2026-11-22T10:00:01.001000000Z",
                "synack_retransmit",
                s,
                c,
                json!({"state": "SYN_RECV"}),
            ),
        ]));
        assert_eq!((ladder.client.as_str(), ladder.server.as_str()), (c, s));
        assert!(ladder.middlebox);
        let shown: Vec<String> = ladder
            .steps
            .iter()
            .map(|s| match &s.what {
                What::Packet {
                    from,
                    to,
                    label,
                    retransmit,
                    ..
                } => format!("{} {from:?}->{to:?} {label} {retransmit}", s.offset),
                What::Mark { at, label } => format!("{} {at:?} {label}", s.offset),
                What::Gap { label } => label.clone(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "+0.000 s Client->Server SYN false",
                "+0.001 s Client->Server ACK (handshake done) false",
                "1.000 s without a packet",
                "+1.001 s Server->Client SYN-ACK true",
                "349.999 s without a packet",
                "+351.000 s Middlebox->Client RST false",
            ]
        );
        let What::Packet { sender, reset, .. } = &ladder.steps[5].what else {
            panic!("{ladder:?}")
        };
        assert!(reset);
        assert_eq!(
            sender,
            "TTL 64, but the server's packets arrive with TTL 61: a middlebox sent it"
        );
        let names: Vec<String> = ladder.columns().into_iter().map(|c| c.1).collect();
        assert_eq!(
            names,
            [
                format!("client {c}"),
                "middlebox".into(),
                format!("server {s}")
            ]
        );
    }

    #[test]
    fn a_joined_findings_reset_is_one_packet_naming_both_nodes() {
        let (c, s) = ("10.0.0.1:40000", "10.0.0.2:7337");
        let ladder = ladder(&sample_group(vec![
            event(
                "2026-11-22T10:00:00.000000000Z",
                "state_change",
                c,
                s,
                json!({"old_state": "CLOSE", "new_state": "SYN_SENT", "node": "a"}),
            ),
            event(
                "2026-11-22T10:00:00.000400000Z",
                "reset_sent",
                s,
                c,
                json!({"state": "CLOSE", "reason": "NO_SOCKET", "node": "b"}),
            ),
            event(
                "2026-11-22T10:00:00.000500000Z",
                "reset_received",
                c,
                s,
                json!({"state": "SYN_SENT", "ttl": 64, "peer_ttl": 64, "node": "a"}),
            ),
        ]));
        assert_eq!(ladder.steps.len(), 2, "{ladder:?}");
        let What::Packet {
            from,
            sender,
            label,
            ..
        } = &ladder.steps[1].what
        else {
            panic!("{ladder:?}")
        };
        assert_eq!((*from, label.as_str()), (Column::Server, "RST (NO_SOCKET)"));
        assert_eq!(
            sender,
            "sent by the server (node b); received by the client: TTL 64, as the server's own \
             packets (node a)"
        );
    }

    #[test]
    fn the_peers_own_reset_names_the_peer_and_cut_items_stay_marks() {
        let (c, s) = ("10.0.0.1:40000", "10.0.0.2:7337");
        let ladder = ladder(&sample_group(vec![
            event(
                "2026-11-22T10:00:00.000000000Z",
                "reset_received",
                c,
                s,
                json!({"state": "SYN_SENT", "ttl": 63, "peer_ttl": 63}),
            ),
            json!({"ts": "2026-11-22T10:00:00.1Z", "event": "socket_error",
                   "cut": "evidence item of 9000 bytes, over the 4096 shown"}),
        ]));
        assert!(!ladder.middlebox);
        let What::Packet { from, sender, .. } = &ladder.steps[0].what else {
            panic!("{ladder:?}")
        };
        assert_eq!(*from, Column::Server);
        assert_eq!(
            sender,
            "sent by the server: TTL 63, as the server's own packets"
        );
        assert_eq!(
            ladder.steps[1].what,
            What::Mark {
                at: Column::Client,
                label: "socket_error: evidence item of 9000 bytes, over the 4096 shown".into()
            }
        );
    }
}
