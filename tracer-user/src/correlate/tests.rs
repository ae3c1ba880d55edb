//! The join without root: lines made as the tracer writes them, fed in the orders and with
//! the clock differences real traces have.

use serde_json::{Value, json};

use super::Correlator;
use super::ends::epoch_ns;
use crate::report::input::strip_log_prefix;

const T0: &str = "2026-11-30T10:00:00";
const SKEW_NS: i64 = 5_000_000_000;

/// An RFC 3339 time `ms` milliseconds after T0.
fn at(ms: i64) -> String {
    let ns = epoch_ns(&format!("{T0}Z")).unwrap() + ms * 1_000_000;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

fn start(node: &str, ms: i64, addresses: &[&str], ports: &[u16]) -> Value {
    json!({"type": "start", "v": 1, "ts": at(ms), "node": node, "ports": ports,
           "addresses": addresses, "kernel": "6.1.0", "version": "0.1.0"})
}

fn stats(node: &str, ms: i64) -> Value {
    json!({"type": "stats", "v": 1, "ts": at(ms), "node": node, "lost_events": 0})
}

fn isn_fields(line: &mut Value, sent: Option<u32>, received: Option<u32>) {
    if let Some(sent) = sent {
        line["isn_sent"] = json!(sent);
    }
    if let Some(received) = received {
        line["isn_received"] = json!(received);
    }
}

/// An event line of one end.
#[allow(clippy::too_many_arguments)]
fn event(
    node: &str,
    ms: i64,
    event: &str,
    side: &str,
    src: &str,
    dst: &str,
    sent: Option<u32>,
    received: Option<u32>,
) -> Value {
    let mut line = json!({"type": "event", "v": 1, "event": event, "ts": at(ms), "node": node,
        "src": src, "dst": dst, "netns": 1, "pid": 10, "comm": "java", "side": side,
        "state": if event == "retransmit" { "SYN_SENT" } else { "ESTABLISHED" }});
    isn_fields(&mut line, sent, received);
    line
}

/// A finding line of one end, its evidence the events given.
#[allow(clippy::too_many_arguments)]
fn finding(
    node: &str,
    ms: i64,
    kind: &str,
    severity: &str,
    side: &str,
    src: &str,
    dst: &str,
    sent: Option<u32>,
    received: Option<u32>,
    evidence: Vec<Value>,
) -> Value {
    let mut line = json!({"type": "finding", "v": 1, "id": 1, "kind": kind,
        "severity": severity, "ts": at(ms), "node": node, "src": src, "dst": dst, "netns": 1,
        "pid": 10, "comm": "java", "side": side, "summary": format!("{kind} summary"),
        "remedy": format!("{kind} remedy"), "evidence": evidence, "count": 1,
        "first_ts": at(ms), "last_ts": at(ms)});
    isn_fields(&mut line, sent, received);
    line
}

/// Feeds lines in order, each arriving at its own time (`release` on), and returns what came
/// out.
fn run(lines: &[Value]) -> Vec<Value> {
    run_with(lines, 1000, true)
}

fn run_with(lines: &[Value], max_ends: usize, release: bool) -> Vec<Value> {
    let mut correlator = Correlator::new(max_ends, SKEW_NS);
    let mut out = Vec::new();
    let mut arrival = i64::MIN;
    for line in lines {
        if let Some(ts) = line["ts"].as_str().and_then(epoch_ns) {
            arrival = arrival.max(ts);
        }
        correlator.add(line, arrival, release, &mut out);
    }
    correlator.finish(&mut out);
    out
}

const CLIENT: &str = "10.0.1.5:40000";
const NATTED: &str = "10.0.2.1:61000";
const SERVER: &str = "10.0.2.9:7337";

/// A clean connection through a NAT, seen by both nodes (`--clean-flows`), client ISN
/// `isn`, server ISN `server_isn`, `skew_ms` added to the server node's clock.
fn clean_pair(isn: u32, server_isn: u32, ms: i64, skew_ms: i64) -> [Value; 2] {
    [
        event(
            "a",
            ms,
            "flow_summary",
            "client",
            CLIENT,
            SERVER,
            Some(isn),
            Some(server_isn),
        ),
        event(
            "b",
            ms + skew_ms,
            "flow_summary",
            "server",
            SERVER,
            NATTED,
            Some(server_isn),
            Some(isn),
        ),
    ]
}

fn kinds(out: &[Value]) -> Vec<&str> {
    out.iter().map(|f| f["kind"].as_str().unwrap()).collect()
}

#[test]
fn the_two_ends_of_a_connection_through_a_nat_join_by_isn() {
    let [a, b] = clean_pair(1000, 2000, 100, 0);
    let out = run(&[start("a", 0, &["10.0.1.5"], &[7337]), a, b]);
    assert_eq!(kinds(&out), ["nat_in_path"]);
    assert_eq!(out[0]["nodes"], json!(["a", "b"]));
    assert_eq!(out[0]["nat"]["server_saw"], NATTED);
    assert_eq!(out[0]["nat"]["client_sent_from"], CLIENT);
    assert_eq!(out[0]["severity"], "warning");
}

#[test]
fn clock_skew_of_a_few_seconds_still_joins_and_more_does_not() {
    let [a, b] = clean_pair(1000, 2000, 100, 3_000);
    assert_eq!(kinds(&run(&[a, b])), ["nat_in_path"]);
    let [a, b] = clean_pair(1000, 2000, 100, -4_000);
    assert_eq!(kinds(&run(&[a, b])), ["nat_in_path"]);
    // Half a minute apart: another connection that happens to share the ISN.
    let [a, b] = clean_pair(1000, 2000, 100, 30_000);
    assert!(run(&[a, b]).is_empty());
}

#[test]
fn an_isn_collision_between_unrelated_flows_does_not_join_them() {
    // Same client ISN, same time, but the server ISNs differ: two connections.
    let [a, _] = clean_pair(1000, 2000, 100, 0);
    let [_, b] = clean_pair(1000, 3000, 100, 0);
    assert!(run(&[a, b]).is_empty());
    // Two candidates share the client ISN: the one whose server ISN agrees is the match,
    // whichever comes first.
    let [a, b] = clean_pair(1000, 2000, 100, 0);
    let [_, mut other] = clean_pair(1000, 7777, 100, 0);
    other["src"] = json!("10.0.2.9:7337");
    other["dst"] = json!("10.0.2.1:62000");
    let out = run(&[a, other, b]);
    assert_eq!(kinds(&out), ["nat_in_path"]);
    assert_eq!(out[0]["nat"]["server_saw"], NATTED);
}

/// Node a's client with ISN 5: a SYN retransmitted at `syn_ms`, and the `connect_timeout`
/// finding at `timeout_ms` with it as evidence.
fn timed_out_client(syn_ms: i64, timeout_ms: i64) -> (Value, Value) {
    let syn = event(
        "a",
        syn_ms,
        "retransmit",
        "client",
        CLIENT,
        SERVER,
        Some(5),
        None,
    );
    let client = finding(
        "a",
        timeout_ms,
        "connect_timeout",
        "error",
        "client",
        CLIENT,
        SERVER,
        Some(5),
        None,
        vec![syn.clone()],
    );
    (syn, client)
}

#[test]
fn files_out_of_order_give_the_same_findings() {
    let (syn, client) = timed_out_client(1000, 3000);
    let synack = |ms| {
        event(
            "b",
            ms,
            "synack_retransmit",
            "server",
            SERVER,
            NATTED,
            Some(9),
            Some(5),
        )
    };
    let server = finding(
        "b",
        2500,
        "return_path_blocked",
        "error",
        "server",
        SERVER,
        NATTED,
        Some(9),
        Some(5),
        vec![synack(1000), synack(2000)],
    );
    let forward = run(&[syn.clone(), client.clone(), synack(1000), server.clone()]);
    // Node b's file first, then node a's (as `kubectl logs` of two pods, one after the
    // other): nothing may be released by time then; the result is the same.
    let backward = run_with(&[server, synack(1000), client, syn], 1000, false);
    assert_eq!(kinds(&forward), ["synack_lost_on_return"]);
    assert_eq!(kinds(&backward), ["synack_lost_on_return"]);
    for out in [&forward, &backward] {
        let nodes = out[0]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(
            out[0]["summary"]
                .as_str()
                .unwrap()
                .contains("A NAT in between")
        );
    }
}

#[test]
fn an_end_whose_other_half_was_not_traced_keeps_its_finding() {
    let (syn, client) = timed_out_client(1000, 3000);
    // No node has the server's address: nothing to say beyond the client's own finding.
    let out = run(&[
        start("a", 0, &["10.0.1.5"], &[7337]),
        syn.clone(),
        client.clone(),
    ]);
    assert_eq!(kinds(&out), ["connect_timeout"]);
    assert_eq!(out[0]["nodes"], json!(["a"]));
    // Node b has it and was traced then, watching 7337: the SYNs died on the way.
    let lines = [
        start("a", 0, &["10.0.1.5"], &[7337]),
        start("b", 0, &["10.0.2.9"], &[7337]),
        syn.clone(),
        client.clone(),
        stats("b", 60_000),
    ];
    let out = run(&lines);
    assert_eq!(kinds(&out), ["syn_lost_in_path"]);
    assert_eq!(out[0]["nodes"], json!(["a", "b"]));
    // Node b stopped tracing well before the attempt: it cannot say the SYNs never came.
    let mut late_syn = syn;
    late_syn["ts"] = json!(at(30_000));
    let mut late_client = client;
    for field in ["ts", "first_ts", "last_ts"] {
        late_client[field] = json!(at(32_000));
    }
    late_client["evidence"] = json!([late_syn.clone()]);
    let lines = [
        start("b", 0, &["10.0.2.9"], &[7337]),
        stats("b", 100),
        late_syn,
        late_client,
    ];
    assert_eq!(kinds(&run(&lines)), ["connect_timeout"]);
}

#[test]
fn a_reset_received_that_the_other_end_did_not_send_is_proven_a_middlebox_reset() {
    let rst = json!({"type": "event", "v": 1, "event": "reset_received", "ts": at(5000),
        "node": "a", "src": CLIENT, "dst": SERVER, "netns": 1, "side": "client",
        "state": "ESTABLISHED", "ttl": 64, "peer_ttl": 62, "isn_sent": 5, "isn_received": 9});
    let client = finding(
        "a",
        5000,
        "middlebox_reset",
        "error",
        "client",
        CLIENT,
        SERVER,
        Some(5),
        Some(9),
        vec![rst.clone()],
    );
    let server_open = event(
        "b",
        100,
        "state_change",
        "server",
        SERVER,
        CLIENT,
        Some(9),
        Some(5),
    );
    let server_later = event(
        "b",
        9000,
        "reset_received",
        "server",
        SERVER,
        CLIENT,
        Some(9),
        Some(5),
    );
    let lines = [
        start("b", 0, &["10.0.2.9"], &[7337]),
        server_open.clone(),
        rst.clone(),
        client.clone(),
        server_later.clone(),
        stats("b", 10_000),
    ];
    let out = run(&lines);
    assert_eq!(kinds(&out), ["middlebox_reset"]);
    assert!(out[0]["summary"].as_str().unwrap().contains("never sent"));
    assert_eq!(out[0]["joined_by"], "isn");
    // The server's record stops long before the RST (a finding's evidence keeps only its
    // first events): its silence proves nothing.
    let mut late_rst = rst.clone();
    late_rst["ts"] = json!(at(20_000));
    let mut late_client = client.clone();
    for field in ["ts", "first_ts", "last_ts"] {
        late_client[field] = json!(at(20_000));
    }
    late_client["evidence"] = json!([late_rst.clone()]);
    // The server's finding spans the RST's time, but its evidence is the opening only.
    let mut server_finding = finding(
        "b",
        100,
        "retransmit_storm",
        "warning",
        "server",
        SERVER,
        CLIENT,
        Some(9),
        Some(5),
        vec![server_open.clone()],
    );
    server_finding["last_ts"] = json!(at(21_000));
    let lines = [
        start("b", 0, &["10.0.2.9"], &[7337]),
        server_finding,
        late_rst,
        late_client,
        stats("b", 30_000),
    ];
    let out = run(&lines);
    assert_eq!(out.len(), 1);
    assert!(
        !out[0]["summary"].as_str().unwrap().contains("never sent"),
        "{}",
        out[0]
    );
    // The server did send one: no proof, the ends' own findings told as one.
    let mut sent = server_later;
    sent["event"] = json!("reset_sent");
    let lines = [
        start("b", 0, &["10.0.2.9"], &[7337]),
        server_open,
        sent,
        rst,
        client,
        stats("b", 10_000),
    ];
    let out = run(&lines);
    assert_eq!(out.len(), 1);
    assert!(!out[0]["summary"].as_str().unwrap().contains("never sent"));
}

#[test]
fn without_isns_the_ends_join_by_addresses_and_time() {
    let client = finding(
        "a",
        1000,
        "connect_refused",
        "error",
        "client",
        CLIENT,
        SERVER,
        None,
        None,
        vec![],
    );
    let server = json!({"type": "finding", "v": 1, "id": 3, "kind": "local_reset",
        "severity": "info", "ts": at(1000), "node": "b", "src": SERVER, "dst": CLIENT,
        "netns": 1, "side": "server", "summary": "s", "remedy": "r", "count": 1,
        "first_ts": at(1000), "last_ts": at(1000),
        "evidence": [{"ts": at(1000), "event": "reset_sent", "src": SERVER, "dst": CLIENT}]});
    let out = run(&[client.clone(), server.clone()]);
    assert_eq!(kinds(&out), ["connect_refused"]);
    assert_eq!(out[0]["joined_by"], "addresses");
    assert!(out[0]["summary"].as_str().unwrap().contains("own kernel"));
    // The addresses of a translated connection do not match: each end alone.
    let mut natted = server;
    natted["dst"] = json!(NATTED);
    assert_eq!(run(&[client, natted]).len(), 2);
}

#[test]
fn memory_is_bounded_and_ends_are_released_as_time_passes() {
    // Ten thousand clean connections over 10 minutes, one end each (the other node was not
    // traced): the table holds a few minutes' worth, never all of them.
    let mut correlator = Correlator::new(1_000_000, SKEW_NS);
    let mut out = Vec::new();
    for n in 0..10_000u32 {
        let ms = i64::from(n) * 60;
        let line = event(
            "a",
            ms,
            "flow_summary",
            "client",
            &format!("10.0.1.5:{}", 20000 + n % 40000),
            SERVER,
            Some(n),
            Some(n),
        );
        correlator.add(
            &line,
            epoch_ns(line["ts"].as_str().unwrap()).unwrap(),
            true,
            &mut out,
        );
    }
    let outcome = correlator.finish(&mut out);
    assert_eq!(outcome.single, 10_000);
    assert!(outcome.peak_ends < 6_000, "{outcome:?}");
    assert_eq!(outcome.released_early, 0);
    // Both ends of each closed connection: joined as the second arrives, held no longer.
    let mut correlator = Correlator::new(1_000_000, SKEW_NS);
    for n in 0..10_000u32 {
        let [a, b] = clean_pair(n + 1, n + 7, i64::from(n), 0);
        for line in [a, b] {
            let arrival = epoch_ns(line["ts"].as_str().unwrap()).unwrap();
            correlator.add(&line, arrival, true, &mut out);
        }
    }
    let outcome = correlator.finish(&mut out);
    assert_eq!(outcome.joined, 10_000);
    assert!(outcome.peak_ends <= 2, "{outcome:?}");
    // A table bound below that releases the oldest early, and says so.
    let mut correlator = Correlator::new(100, SKEW_NS);
    for n in 0..1_000u32 {
        let line = event(
            "a",
            0,
            "flow_summary",
            "client",
            &format!("10.0.1.5:{}", 20000 + n),
            SERVER,
            Some(n),
            None,
        );
        correlator.add(&line, 0, false, &mut out);
    }
    let outcome = correlator.finish(&mut out);
    assert_eq!(outcome.released_early, 900);
    assert!(outcome.peak_ends <= 101);
}

#[test]
fn kubectl_log_prefixes_come_off() {
    let line = r#"{"type":"stats"}"#;
    assert_eq!(
        strip_log_prefix(&format!("[pod/shuffletrace-x7k2p/shuffletrace] {line}")),
        (line, true)
    );
    assert_eq!(
        strip_log_prefix(&format!(
            "[pod/shuffletrace-x7k2p/shuffletrace] 2026-11-30T10:00:00.123456789Z {line}"
        )),
        (line, true)
    );
    assert_eq!(strip_log_prefix(line), (line, false));
    assert_eq!(
        strip_log_prefix("[pod/a/b] 2026-11-30T10:00:00Z  INFO shuffletrace: watching").0,
        " INFO shuffletrace: watching"
    );
}
