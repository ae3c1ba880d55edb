//! The report built one line at a time, so memory follows the number of finding groups and
//! not the size of the input: each line updates the header, its group (the earliest line of
//! a group gives its summary, remedy and evidence, as a sort by time would), the timeline's
//! first entries and the loss counters, and is dropped. Every collection is bounded.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{
    Group, Report, TimelineEntry,
    bounded::{CappedSet, Earliest, FirstSeen, Key, MAX_NAME, MAX_TEXT, cut},
    losses::Losses,
    time::Window,
};
use crate::{cli::ReportArgs, sinks::SCHEMA_VERSION};

/// Groups kept; findings of further groups are counted (`groups_omitted`) and in the totals.
pub const MAX_GROUPS: usize = 1000;
/// Nodes, kernels and versions listed in the header.
const MAX_LISTED: usize = 1000;
/// Nodes and processes listed per group.
const GROUP_LIST: usize = 64;
/// Lines shown in the timeline, and evidence items per group.
pub const TIMELINE: usize = 20;
const EVIDENCE: usize = 5;
/// An evidence item longer than this (shuffletrace's are ~300 bytes) is shown cut.
const MAX_EVIDENCE_ITEM: usize = 4096;

pub(super) fn text(value: &Value, key: &str) -> String {
    cut(value[key].as_str().unwrap_or_default(), MAX_NAME)
}

fn process(value: &Value) -> String {
    match (value["comm"].as_str(), value["pid"].as_u64()) {
        (Some(comm), Some(pid)) => format!("{} ({pid})", cut(comm, MAX_NAME)),
        _ => "unknown".into(),
    }
}

fn port_of(endpoint: &str) -> Option<u64> {
    endpoint.rsplit(':').next()?.parse().ok()
}

pub(super) fn severity_rank(severity: &str) -> u8 {
    match severity {
        "error" => 2,
        "warning" => 1,
        _ => 0,
    }
}

fn evidence_item(item: &Value) -> Value {
    let size = serde_json::to_string(item).map_or(0, |s| s.len());
    if size <= MAX_EVIDENCE_ITEM {
        return item.clone();
    }
    json!({
        "ts": text(item, "ts"),
        "event": text(item, "event"),
        "cut": format!("evidence item of {size} bytes, over the {MAX_EVIDENCE_ITEM} shown"),
    })
}

/// One group while lines come in.
struct Pending {
    /// The line that gives the summary, remedy and evidence: the earliest.
    first: Key,
    service: Option<String>,
    summary: String,
    remedy: String,
    evidence: Vec<Value>,
    /// The highest severity; among equals, the earliest line's.
    severity: (u8, Key, String),
    count: u64,
    lines: u64,
    first_ts: String,
    last_ts: String,
    nodes: FirstSeen,
    processes: FirstSeen,
}

impl Pending {
    fn new(f: &Value, key: &Key) -> Self {
        let severity = f["severity"].as_str().unwrap_or_default();
        let mut group = Self {
            first: key.clone(),
            service: None,
            summary: String::new(),
            remedy: String::new(),
            evidence: Vec::new(),
            severity: (
                severity_rank(severity),
                key.clone(),
                cut(severity, MAX_NAME),
            ),
            count: 0,
            lines: 0,
            first_ts: text(f, "first_ts"),
            last_ts: text(f, "last_ts"),
            nodes: FirstSeen::new(GROUP_LIST),
            processes: FirstSeen::new(GROUP_LIST),
        };
        group.describe(f, key);
        group
    }

    fn describe(&mut self, f: &Value, key: &Key) {
        self.first = key.clone();
        self.service = f["service"].as_str().map(|s| cut(s, MAX_NAME));
        self.summary = cut(f["summary"].as_str().unwrap_or_default(), MAX_TEXT);
        self.remedy = cut(f["remedy"].as_str().unwrap_or_default(), MAX_TEXT);
        self.evidence = f["evidence"]
            .as_array()
            .map(|e| e.iter().take(EVIDENCE).map(evidence_item).collect())
            .unwrap_or_default();
    }

    fn add(&mut self, f: &Value, key: &Key, count: u64) {
        if *key < self.first {
            self.describe(f, key);
        }
        self.count = self.count.saturating_add(count);
        self.lines += 1;
        let (first, last) = (text(f, "first_ts"), text(f, "last_ts"));
        if first < self.first_ts {
            self.first_ts = first;
        }
        if last > self.last_ts {
            self.last_ts = last;
        }
        let severity = f["severity"].as_str().unwrap_or_default();
        let rank = severity_rank(severity);
        if rank > self.severity.0 || (rank == self.severity.0 && *key < self.severity.1) {
            self.severity = (rank, key.clone(), cut(severity, MAX_NAME));
        }
        self.nodes.add(key, &text(f, "node"));
        // A finding `correlate` joined names every node that saw the connection.
        for node in f["nodes"].as_array().into_iter().flatten() {
            if let Some(node) = node.as_str() {
                self.nodes.add(key, node);
            }
        }
        self.processes.add(key, &process(f));
    }

    fn finish(self, (kind, endpoint): (String, String)) -> Group {
        Group {
            kind,
            severity: self.severity.2,
            endpoint,
            service: self.service,
            count: self.count,
            lines: self.lines,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            nodes_omitted: self.nodes.omitted,
            nodes: self.nodes.into_vec(),
            processes_omitted: self.processes.omitted,
            processes: self.processes.into_vec(),
            summary: self.summary,
            remedy: self.remedy,
            evidence: self.evidence,
        }
    }
}

pub struct Builder<'a> {
    args: &'a ReportArgs,
    window: &'a Window,
    seq: u64,
    nodes: CappedSet,
    kernels: CappedSet,
    versions: CappedSet,
    ports: BTreeSet<u64>,
    from: Option<String>,
    to: Option<String>,
    findings: u64,
    groups: BTreeMap<(String, String), Pending>,
    groups_omitted: u64,
    timeline: Earliest<TimelineEntry>,
    losses: Losses,
}

impl<'a> Builder<'a> {
    pub fn new(args: &'a ReportArgs, window: &'a Window) -> Self {
        Self {
            args,
            window,
            seq: 0,
            nodes: CappedSet::new(MAX_LISTED),
            kernels: CappedSet::new(MAX_LISTED),
            versions: CappedSet::new(MAX_LISTED),
            ports: BTreeSet::new(),
            from: None,
            to: None,
            findings: 0,
            groups: BTreeMap::new(),
            groups_omitted: 0,
            timeline: Earliest::new(TIMELINE),
            losses: Losses::default(),
        }
    }

    /// Takes one checked line into the report.
    pub fn add(&mut self, line: &Value) {
        self.seq += 1;
        let ts = line["ts"].as_str().unwrap_or_default();
        let node = line["node"].as_str().unwrap_or_default();
        let inside = self.window.holds(ts);
        if inside {
            self.nodes.insert(node);
            if self.from.as_deref().is_none_or(|from| ts < from) {
                self.from = Some(cut(ts, MAX_NAME));
            }
            if self.to.as_deref().is_none_or(|to| ts > to) {
                self.to = Some(cut(ts, MAX_NAME));
            }
        }
        match line["type"].as_str() {
            Some("start") => {
                let ports = line["ports"].as_array().into_iter().flatten();
                let valid = ports
                    .filter_map(Value::as_u64)
                    .filter(|p| (1..=65535).contains(p));
                self.ports.extend(valid);
                for (set, key) in [
                    (&mut self.kernels, "kernel"),
                    (&mut self.versions, "version"),
                ] {
                    if let Some(value) = line[key].as_str().filter(|v| !v.is_empty()) {
                        set.insert(value);
                    }
                }
            }
            Some("finding") if inside && self.selected(line) => self.finding(line, ts),
            Some("stats") => {
                let total = line["lost_events"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_add(line["recursion_misses"].as_u64().unwrap_or(0));
                self.losses.add(node, ts, total, inside);
            }
            _ => {}
        }
    }

    /// `--kind` and `--port`.
    fn selected(&self, f: &Value) -> bool {
        let kind = self.args.kind.as_deref().is_none_or(|k| f["kind"] == k);
        let port = self.args.port.is_none_or(|p| {
            let p = Some(u64::from(p));
            port_of(f["src"].as_str().unwrap_or_default()) == p
                || port_of(f["dst"].as_str().unwrap_or_default()) == p
        });
        kind && port
    }

    fn finding(&mut self, f: &Value, ts: &str) {
        let count = f["count"].as_u64().unwrap_or(0);
        self.findings = self.findings.saturating_add(count);
        let key: Key = (cut(ts, MAX_NAME), self.seq);
        self.timeline.offer(key.clone(), || TimelineEntry {
            ts: key.0.clone(),
            kind: text(f, "kind"),
            node: text(f, "node"),
            src: text(f, "src"),
            dst: text(f, "dst"),
            process: process(f),
            count,
        });
        let endpoint = text(f, if f["side"] == "server" { "src" } else { "dst" });
        let group_key = (text(f, "kind"), endpoint);
        if !self.groups.contains_key(&group_key) {
            if self.groups.len() >= MAX_GROUPS {
                self.groups_omitted += 1;
                return;
            }
            self.groups.insert(group_key.clone(), Pending::new(f, &key));
        }
        if let Some(group) = self.groups.get_mut(&group_key) {
            group.add(f, &key, count);
        }
    }

    /// The report; the caller fills in what the reading of the inputs found.
    pub fn finish(self) -> Report {
        let mut groups: Vec<Group> = self.groups.into_iter().map(|(k, g)| g.finish(k)).collect();
        groups.sort_by(|a, b| {
            severity_rank(&b.severity)
                .cmp(&severity_rank(&a.severity))
                .then(b.count.cmp(&a.count))
                .then(a.kind.cmp(&b.kind))
                .then(a.endpoint.cmp(&b.endpoint))
        });
        let stats_lines_omitted = self.losses.omitted;
        Report {
            line_type: "report",
            v: SCHEMA_VERSION,
            nodes_omitted: self.nodes.omitted,
            nodes: self.nodes.into_vec(),
            from: self.from,
            to: self.to,
            ports: self.ports.into_iter().collect(),
            kernels_omitted: self.kernels.omitted,
            kernels: self.kernels.into_vec(),
            versions_omitted: self.versions.omitted,
            versions: self.versions.into_vec(),
            findings: self.findings,
            groups,
            groups_omitted: self.groups_omitted,
            timeline_omitted: self.timeline.omitted,
            timeline: self.timeline.into_vec(),
            lost_events: self.losses.total(),
            stats_lines_omitted,
            ..Report::default()
        }
    }
}
