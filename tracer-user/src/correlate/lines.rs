//! The finding lines `correlate` writes: a joined verdict built on one end's finding line
//! (its tuple, process and times), both ends' evidence in time order, the nodes and the
//! ends as each saw the connection; and the words its sentences name ends and services with.

use serde_json::{Map, Value, json};

use super::ends::{End, Role};

pub fn rfc3339(ns: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

pub fn port(endpoint: &str) -> u16 {
    endpoint
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

/// `node 10.0.0.1:40000 (java)`: an end as a sentence names it.
pub fn who(end: &End) -> String {
    let process = end.process.as_ref().and_then(|p| p["comm"].as_str());
    match process {
        Some(p) => format!("{} {} ({p})", end.node, end.local),
        None => format!("{} {}", end.node, end.local),
    }
}

/// The service a connection is to, by the server's port.
pub fn service(port: u16) -> String {
    match crate::services::service_name(port) {
        Some(name) => name.to_owned(),
        None => format!("port {port}"),
    }
}

/// What a joined finding says, and about which ends.
pub struct Verdict<'a> {
    pub kind: &'a str,
    pub severity: &'a str,
    pub summary: String,
    pub remedy: String,
    /// The nodes, the one that tells it first.
    pub nodes: &'a [&'a str],
    pub ends: &'a [&'a End],
    /// The count, where it is not the base line's.
    pub count: Option<u64>,
}

impl<'a> Verdict<'a> {
    /// A verdict whose count is its base line's.
    pub fn of(
        kind: &'a str,
        severity: &'a str,
        summary: String,
        remedy: String,
        nodes: &'a [&'a str],
        ends: &'a [&'a End],
    ) -> Self {
        Self {
            kind,
            severity,
            summary,
            remedy,
            nodes,
            ends,
            count: None,
        }
    }
}

/// The finding line of a joined verdict: `base`'s fields (its end's tuple, process and
/// times), the verdict, both ends and their evidence in time order, and the nodes.
pub fn joined(id: u64, base: &Value, verdict: Verdict<'_>) -> Value {
    let (nodes, ends) = (verdict.nodes, verdict.ends);
    let mut line: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
    line.remove("update_of");
    line.remove("peer");
    line.insert("id".into(), json!(id));
    line.insert("kind".into(), json!(verdict.kind));
    line.insert("severity".into(), json!(verdict.severity));
    line.insert("summary".into(), json!(verdict.summary));
    line.insert("remedy".into(), json!(verdict.remedy));
    if let Some(count) = verdict.count {
        line.insert("count".into(), json!(count));
    } else if !line.contains_key("count") {
        line.insert("count".into(), json!(1));
    }
    let service_port = port(line["dst"].as_str().unwrap_or_default());
    let service_port = if line["side"] == "server" {
        port(line["src"].as_str().unwrap_or_default())
    } else {
        service_port
    };
    match crate::services::service_name(service_port) {
        Some(name) => line.insert("service".into(), json!(name)),
        None => line.remove("service"),
    };
    let mut evidence: Vec<Value> = ends
        .iter()
        .flat_map(|end| end.evidence.iter().cloned())
        .collect();
    evidence.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    line.insert("evidence".into(), Value::Array(evidence));
    let mut listed: Vec<&str> = Vec::new();
    for node in nodes {
        if !listed.contains(node) {
            listed.push(node);
        }
    }
    line.insert("nodes".into(), json!(listed));
    line.insert(
        "ends".into(),
        Value::Array(ends.iter().map(|end| end_line(end)).collect()),
    );
    let first = ends.iter().map(|e| e.first_ns).min().unwrap_or_default();
    let last = ends.iter().map(|e| e.last_ns).max().unwrap_or_default();
    let first_ts = line["first_ts"].as_str().and_then(super::ends::epoch_ns);
    if first_ts.is_none_or(|f| first < f) {
        line.insert("first_ts".into(), json!(rfc3339(first)));
    }
    let last_ts = line["last_ts"].as_str().and_then(super::ends::epoch_ns);
    if last_ts.is_none_or(|l| last > l) {
        line.insert("last_ts".into(), json!(rfc3339(last)));
    }
    Value::Object(line)
}

/// A finding line made from an end when no finding of either end is there to build on (a
/// clean connection's NAT, an answer lost on the way): its tuple, process and times.
pub fn base_line(end: &End, first_ns: i64, last_ns: i64, count: u64) -> Value {
    let process = |key: &str| {
        end.process
            .as_ref()
            .and_then(|p| p.get(key).cloned())
            .unwrap_or(Value::Null)
    };
    json!({
        "type": "finding",
        "v": crate::sinks::SCHEMA_VERSION,
        "ts": rfc3339(first_ns),
        "node": end.node.as_ref(),
        "src": end.local,
        "dst": end.remote,
        "netns": end.netns,
        "pid": process("pid"),
        "comm": process("comm"),
        "uid": process("uid"),
        "side": end.role.map(Role::name),
        "count": count,
        "first_ts": rfc3339(first_ns),
        "last_ts": rfc3339(last_ns),
    })
}

/// One end of a joined finding, as the `ends` field lists it.
pub fn end_line(end: &End) -> Value {
    let (isn_sent, isn_received) = match end.role {
        Some(Role::Client) => (end.client_isn, end.server_isn),
        Some(Role::Server) => (end.server_isn, end.client_isn),
        None => (None, None),
    };
    let mut line = json!({
        "node": end.node.as_ref(),
        "side": end.role.map(Role::name),
        "src": end.local,
        "dst": end.remote,
        "netns": end.netns,
        "kinds": end.kinds(),
    });
    let object = line.as_object_mut().expect("an object");
    for (key, value) in [("isn_sent", isn_sent), ("isn_received", isn_received)] {
        if let Some(value) = value {
            object.insert(key.into(), json!(value));
        }
    }
    if let Some(Value::Object(process)) = &end.process {
        object.extend(process.clone());
    }
    line
}
