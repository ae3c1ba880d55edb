//! One node's view of one connection (an *end*), built from that node's trace lines: the
//! events and findings about one flow, its role (client or server) and the initial sequence
//! numbers that let `correlate` find the same connection in another node's trace.

use std::sync::Arc;

use serde_json::Value;

/// Most evidence items one end keeps (its own events, in arrival order).
pub const MAX_END_EVIDENCE: usize = 16;
/// Most finding lines one end keeps (a flow has a few: its finding and updates).
pub const MAX_END_FINDINGS: usize = 8;

/// Which end of the connection a node's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// What one trace line says about one flow (an event line, or a finding line).
#[derive(Debug)]
pub struct Observation {
    pub node: Arc<str>,
    pub netns: u64,
    pub local: String,
    pub remote: String,
    pub role: Option<Role>,
    pub client_isn: Option<u32>,
    pub server_isn: Option<u32>,
    /// The line's own time (event time; a finding's first occurrence), ns since the epoch.
    pub ts_ns: i64,
    /// The latest time it speaks of (a finding's last occurrence).
    pub last_ns: i64,
}

/// Nanoseconds since the epoch of an RFC 3339 time.
pub fn epoch_ns(ts: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

fn isn(value: &Value, field: &str) -> Option<u32> {
    value[field].as_u64().and_then(|n| u32::try_from(n).ok())
}

/// The role and ISNs a line gives its end. A line without a side that received an ISN and
/// sent none is a RST answering a SYN nothing listened for: the server's end.
fn role_and_isns(value: &Value) -> (Option<Role>, Option<u32>, Option<u32>) {
    let (sent, received) = (isn(value, "isn_sent"), isn(value, "isn_received"));
    let role = match value["side"].as_str() {
        Some("client") => Some(Role::Client),
        Some("server") => Some(Role::Server),
        _ if received.is_some() && sent.is_none() => Some(Role::Server),
        _ => None,
    };
    match role {
        Some(Role::Client) => (role, sent, received),
        Some(Role::Server) => (role, received, sent),
        None => (None, None, None),
    }
}

/// What an event or finding line says about its flow; None for other lines and lines
/// without a node, time or flow.
pub fn observe(value: &Value, nodes: &crate::correlate::nodes::Nodes) -> Option<Observation> {
    let ts = value["ts"].as_str()?;
    let node = nodes.intern(value["node"].as_str()?);
    let (role, client_isn, server_isn) = role_and_isns(value);
    let (ts_ns, last_ns) = match value["type"].as_str()? {
        "finding" => {
            let first = value["first_ts"].as_str().and_then(epoch_ns);
            let last = value["last_ts"].as_str().and_then(epoch_ns);
            let at = epoch_ns(ts)?;
            (first.unwrap_or(at), last.unwrap_or(at).max(at))
        }
        "event" => {
            let at = epoch_ns(ts)?;
            (at, at)
        }
        _ => return None,
    };
    Some(Observation {
        node,
        netns: value["netns"].as_u64().unwrap_or(0),
        local: value["src"].as_str()?.to_owned(),
        remote: value["dst"].as_str()?.to_owned(),
        role,
        client_isn,
        server_isn,
        ts_ns,
        last_ns,
    })
}

/// One node's record of one connection.
#[derive(Debug, Clone)]
pub struct End {
    pub node: Arc<str>,
    pub netns: u64,
    pub local: String,
    pub remote: String,
    pub role: Option<Role>,
    pub client_isn: Option<u32>,
    pub server_isn: Option<u32>,
    pub first_ns: i64,
    pub last_ns: i64,
    /// When its latest line arrived, in the arrival time of the merged inputs (see
    /// `merge`): what releases it once no other node's line can match it any more.
    pub arrived_ns: i64,
    /// Its finding lines (the first `MAX_END_FINDINGS`), and how many more there were.
    pub findings: Vec<Value>,
    pub findings_omitted: u64,
    /// Its own kernel events, each once (events also appear in findings' evidence).
    pub evidence: Vec<Value>,
    /// What its events say happened.
    pub sent_rst: bool,
    pub received_rst: Option<Value>,
    pub synack_retransmits: u64,
    pub syn_retransmits: u64,
    pub established: bool,
    /// A clean flow's one record (`--clean-flows`).
    pub clean: bool,
    /// Its socket closed: no more lines will come about it.
    pub closed: bool,
    /// The latest of its own kernel events seen (ns since the epoch; `i64::MIN`: none): how
    /// far its record goes (a finding's evidence keeps only its first events).
    pub last_event_ns: i64,
    /// Its process, from the first line that names one: `pid`, `comm`, `main_class`, `pod`,
    /// `namespace`.
    pub process: Option<Value>,
}

impl End {
    pub fn new(obs: &Observation, arrived_ns: i64) -> Self {
        Self {
            node: obs.node.clone(),
            netns: obs.netns,
            local: obs.local.clone(),
            remote: obs.remote.clone(),
            role: obs.role,
            client_isn: obs.client_isn,
            server_isn: obs.server_isn,
            first_ns: obs.ts_ns,
            last_ns: obs.last_ns,
            arrived_ns,
            findings: Vec::new(),
            findings_omitted: 0,
            evidence: Vec::new(),
            sent_rst: false,
            received_rst: None,
            synack_retransmits: 0,
            syn_retransmits: 0,
            established: false,
            clean: false,
            closed: false,
            last_event_ns: i64::MIN,
            process: None,
        }
    }

    /// Whether a line about the same tuple on the same node is about this connection: the
    /// ISNs agree where both know them.
    pub fn accepts(&self, obs: &Observation) -> bool {
        let agree = |a: Option<u32>, b: Option<u32>| a.is_none() || b.is_none() || a == b;
        agree(self.client_isn, obs.client_isn) && agree(self.server_isn, obs.server_isn)
    }

    /// Adds a line about this end.
    pub fn add(&mut self, obs: &Observation, value: &Value, arrived_ns: i64) {
        self.role = self.role.or(obs.role);
        self.client_isn = self.client_isn.or(obs.client_isn);
        self.server_isn = self.server_isn.or(obs.server_isn);
        self.first_ns = self.first_ns.min(obs.ts_ns);
        self.last_ns = self.last_ns.max(obs.last_ns);
        self.arrived_ns = self.arrived_ns.max(arrived_ns);
        if self.process.is_none() && value.get("pid").is_some_and(|p| !p.is_null()) {
            let mut process = serde_json::Map::new();
            for key in ["pid", "comm", "uid", "main_class", "pod", "namespace"] {
                if let Some(field) = value.get(key).filter(|v| !v.is_null()) {
                    process.insert(key.to_owned(), field.clone());
                }
            }
            self.process = Some(Value::Object(process));
        }
        match value["type"].as_str() {
            Some("finding") => {
                if let Some(items) = value["evidence"].as_array() {
                    for item in items.iter().filter(|e| e["src"] == value["src"]) {
                        self.note_event(item);
                    }
                }
                if self.findings.len() < MAX_END_FINDINGS {
                    self.findings.push(value.clone());
                } else {
                    self.findings_omitted += 1;
                }
            }
            _ => self.note_event(value),
        }
    }

    /// Takes in one kernel event (an event line or an evidence item), once.
    fn note_event(&mut self, event: &Value) {
        let (ts, name) = (&event["ts"], &event["event"]);
        if self
            .evidence
            .iter()
            .any(|e| &e["ts"] == ts && &e["event"] == name)
        {
            return;
        }
        if let Some(at) = ts.as_str().and_then(epoch_ns) {
            self.last_event_ns = self.last_event_ns.max(at);
        }
        match name.as_str() {
            Some("reset_sent") => self.sent_rst = true,
            Some("reset_received") if self.received_rst.is_none() => {
                self.received_rst = Some(event.clone());
            }
            Some("synack_retransmit") => self.synack_retransmits += 1,
            Some("retransmit") if event["state"] == "SYN_SENT" => self.syn_retransmits += 1,
            Some("state_change") if event["new_state"] == "ESTABLISHED" => self.established = true,
            Some("state_change") if event["new_state"] == "CLOSE" => self.closed = true,
            Some("flow_summary") => {
                self.established = true;
                self.clean = true;
                self.closed = true;
            }
            _ => {}
        }
        if self.evidence.len() < MAX_END_EVIDENCE {
            self.evidence.push(evidence_item(event, &self.node));
        }
    }

    /// The finding kinds of this end, most severe first.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self
            .findings
            .iter()
            .filter_map(|f| f["kind"].as_str())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds
    }

    pub fn has_kind(&self, kind: &str) -> bool {
        self.findings.iter().any(|f| f["kind"] == kind)
    }

    /// Its most severe finding (the first of them).
    pub fn primary(&self) -> Option<&Value> {
        self.findings.iter().max_by_key(|f| {
            (
                severity_rank(&f["severity"]),
                std::cmp::Reverse(f["id"].as_u64()),
            )
        })
    }

    /// The address part of an endpoint (`10.0.0.1:40000` -> `10.0.0.1`, `[fd00::1]:80` ->
    /// `fd00::1`).
    pub fn ip(endpoint: &str) -> &str {
        let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Severity as a number for ordering (`error` highest).
pub fn severity_rank(severity: &Value) -> u8 {
    match severity.as_str() {
        Some("error") => 3,
        Some("warning") => 2,
        Some("info") => 1,
        _ => 0,
    }
}

/// An event as evidence of a joined finding: the schema's evidence fields, and the node
/// that saw it.
fn evidence_item(event: &Value, node: &str) -> Value {
    const FIELDS: [&str; 15] = [
        "ts",
        "event",
        "src",
        "dst",
        "old_state",
        "new_state",
        "state",
        "error",
        "reason",
        "ttl",
        "peer_ttl",
        "class",
        "direction",
        "isn_sent",
        "isn_received",
    ];
    let mut item = serde_json::Map::new();
    for field in FIELDS {
        if let Some(value) = event.get(field) {
            item.insert(field.to_owned(), value.clone());
        }
    }
    item.insert("node".to_owned(), Value::String(node.to_owned()));
    Value::Object(item)
}
