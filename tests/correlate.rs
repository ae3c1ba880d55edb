//! Root integration tests of `correlate`: two tracers on one machine stand for two nodes
//! (`--netns` restricts each to its own namespace, `--node-name` names it), a router
//! namespace between them forwards, drops, resets or translates (MASQUERADE), and the two
//! nodes' outputs are joined by the real binary. Each verdict is asserted on what
//! `correlate` writes, and the clean run through the NAT must give nothing but `nat_in_path`.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    Forgotten, Netns, Routed, Tracer, connect, dump, exec_in, findings, masquerade, nat_router,
    settle, write_after_idle,
};

/// A tracer that is the node of one namespace.
fn node(ns: &Netns, name: &str, extra: &[&str]) -> Tracer {
    let path = ns.path();
    let mut args = vec!["--netns", &path, "--node-name", name];
    args.extend_from_slice(extra);
    Tracer::start_with(&args)
}

/// The router's address on the server's side: what a MASQUERADE'd client looks like there.
fn router_server_side(net: &Routed) -> String {
    let server = net.server_ip.to_string();
    let (prefix, _) = server.rsplit_once('.').unwrap();
    format!("{prefix}.1")
}

/// Writes each node's lines to its own file in a fresh directory.
fn save(nodes: &[(&str, &[Value])]) -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "st-correlate-{}-{}",
        std::process::id(),
        nodes[0].0
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    nodes
        .iter()
        .map(|(name, lines)| {
            let path = dir.join(format!("{name}.ndjson"));
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// `shuffletrace correlate --format json INPUTS` (`stdin` piped in when given): its finding
/// lines, each checked against the schema.
fn correlate(inputs: &[&Path], stdin: Option<&str>) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(["correlate", "--format", "json"])
        .args(inputs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run correlate");
    let mut pipe = child.stdin.take().unwrap();
    let text = stdin.unwrap_or_default().to_owned();
    let writer = thread::spawn(move || {
        let _ = pipe.write_all(text.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "correlate failed");
    let schema: Value =
        serde_json::from_str(include_str!("../schema/shuffletrace.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            if let Err(e) = validator.validate(&value) {
                panic!("not the schema at {}: {e}\n{line}", e.instance_path);
            }
            value
        })
        .collect()
}

fn nodes_of(finding: &Value) -> Vec<&str> {
    finding["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

fn serious(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|f| f["severity"] == "error" || f["severity"] == "warning")
        .collect()
}

/// A server on `addr` in `ns` that answers each message with "ok", until `stop` is dropped.
fn echo_server(ns: &Netns, addr: SocketAddr) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = ns.run("st-shuffle", move || {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut conns: Vec<TcpStream> = Vec::new();
        loop {
            if let Ok((conn, _)) = listener.accept() {
                conn.set_nonblocking(true).unwrap();
                conns.push(conn);
            }
            let mut buf = [0u8; 64];
            conns.retain_mut(|conn| match conn.read(&mut buf) {
                Ok(0) => false,
                Ok(_) => conn.write_all(b"ok").is_ok(),
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            });
            if matches!(stop_rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (stop_tx, handle)
}

#[test]
fn clean_connections_through_a_nat_give_nat_in_path_and_nothing_else() {
    let net = Routed::new();
    masquerade(&net);
    let target = SocketAddr::new(net.server_ip, 7337);
    let clean = ["--ports", "7337", "--clean-flows"];
    let client_node = node(&net.client, "node-client", &clean);
    let server_node = node(&net.server, "node-server", &clean);
    let (stop, server) = echo_server(&net.server, target);
    const CONNECTIONS: usize = 3;
    net.client
        .run("shuffle-client", move || {
            for _ in 0..CONNECTIONS {
                let mut stream = connect(target).expect("connect");
                let mut buf = [0u8; 2];
                stream.write_all(b"fetch").unwrap();
                stream.read_exact(&mut buf).unwrap();
            }
        })
        .join()
        .unwrap();
    settle();
    drop(stop);
    server.join().unwrap();
    settle();
    let (client_lines, server_lines) = (client_node.stop(), server_node.stop());
    // Each node saw only its own end.
    assert!(
        client_lines
            .iter()
            .filter(|l| l["type"] == "event")
            .all(|l| l["netns"] == net.client.inode()),
        "{}",
        dump(&client_lines)
    );
    let start = &server_lines[0];
    assert_eq!(start["netns"][0], net.server.inode());
    assert!(
        start["addresses"]
            .as_array()
            .unwrap()
            .contains(&Value::from(net.server_ip.to_string())),
        "{start}"
    );
    let files = save(&[
        ("node-client", &client_lines),
        ("node-server", &server_lines),
    ]);
    let out = correlate(&[&files[0], &files[1]], None);
    let serious = serious(&out);
    assert_eq!(serious.len(), 1, "only nat_in_path:\n{}", dump(&out));
    let nat = serious[0];
    assert_eq!(nat["kind"], "nat_in_path");
    assert_eq!(nat["severity"], "warning");
    assert_eq!(nat["count"], CONNECTIONS as u64, "{}", dump(&out));
    assert_eq!(nodes_of(nat), ["node-client", "node-server"]);
    assert_eq!(nat["joined_by"], "isn");
    let seen_as = nat["nat"]["server_saw"].as_str().unwrap();
    assert!(
        seen_as.starts_with(&format!("{}:", router_server_side(&net))),
        "{nat}"
    );
    assert!(
        nat["nat"]["client_sent_from"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", net.client_ip))
    );
    let summary = nat["summary"].as_str().unwrap();
    assert!(summary.contains("NAT"), "{summary}");
    assert!(
        nat["remedy"]
            .as_str()
            .unwrap()
            .contains("peering connection"),
        "{nat}"
    );
    // The same, from the concatenated `kubectl logs --prefix` of both pods on stdin, with
    // the tool's own log lines in between, and the server's pod first.
    let mut logs = String::new();
    for (pod, lines) in [("b", &server_lines), ("a", &client_lines)] {
        logs.push_str(&format!(
            "[pod/shuffletrace-{pod}/shuffletrace] 2026-11-30T00:00:00Z INFO shuffletrace: watching\n"
        ));
        for line in lines.iter() {
            logs.push_str(&format!("[pod/shuffletrace-{pod}/shuffletrace] {line}\n"));
        }
    }
    let from_logs = correlate(&[Path::new("-")], Some(&logs));
    let kinds: Vec<&Value> = from_logs.iter().map(|f| &f["kind"]).collect();
    assert_eq!(kinds, [&Value::from("nat_in_path")], "{}", dump(&from_logs));
    assert_eq!(from_logs[0]["count"], CONNECTIONS as u64);
}

/// Client, router and server with the two tracers attached; `rule` is appended to the
/// router's FORWARD chain.
fn with_router_rule(rule: &[&str], ports: &str) -> (Routed, Tracer, Tracer) {
    let net = Routed::new();
    let mut args = vec!["iptables", "-A", "FORWARD"];
    args.extend_from_slice(rule);
    exec_in(&net.router, &args);
    let client_node = node(&net.client, "node-client", &["--ports", ports]);
    let server_node = node(&net.server, "node-server", &["--ports", ports]);
    (net, client_node, server_node)
}

/// A connect from the client namespace to a listening server that must time out after a
/// few seconds; both nodes' lines, and what `correlate` made of them (named by `tag`).
fn connect_times_out(
    net: &Routed,
    (client_node, server_node): (Tracer, Tracer),
    port: u16,
    tag: &str,
) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let target = SocketAddr::new(net.server_ip, port);
    let (stop, server) = echo_server(&net.server, target);
    let error = net
        .client
        .run("st-beeline", move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(4))
                .map(|_| ())
                .unwrap_err()
                .kind()
        })
        .join()
        .unwrap();
    assert_eq!(error, std::io::ErrorKind::TimedOut);
    settle();
    drop(stop);
    server.join().unwrap();
    let (client_lines, server_lines) = (client_node.stop(), server_node.stop());
    let files = save(&[
        (&format!("node-client-{tag}"), &client_lines),
        (&format!("node-server-{tag}"), &server_lines),
    ]);
    let out = correlate(&[&files[0], &files[1]], None);
    (client_lines, server_lines, out)
}

#[test]
fn syns_dropped_between_the_nodes_are_syn_lost_in_path() {
    let (net, client_node, server_node) =
        with_router_rule(&["-p", "tcp", "--dport", "10001", "-j", "DROP"], "10001");
    let (client_lines, _, out) = connect_times_out(&net, (client_node, server_node), 10001, "syn");
    assert!(
        !findings(&client_lines, "connect_timeout").is_empty(),
        "{}",
        dump(&client_lines)
    );
    let serious = serious(&out);
    assert_eq!(serious.len(), 1, "{}", dump(&out));
    let lost = serious[0];
    assert_eq!(lost["kind"], "syn_lost_in_path", "{}", dump(&out));
    assert_eq!(lost["severity"], "error");
    assert_eq!(nodes_of(lost), ["node-client", "node-server"]);
    let summary = lost["summary"].as_str().unwrap();
    assert!(
        summary.contains("never reached node node-server"),
        "{summary}"
    );
    assert!(
        lost["remedy"].as_str().unwrap().contains("security group"),
        "{lost}"
    );
}

#[test]
fn synacks_dropped_on_the_way_back_through_a_nat_are_synack_lost_on_return() {
    let (net, client_node, server_node) = with_router_rule(
        &[
            "-p",
            "tcp",
            "--sport",
            "10000",
            "--tcp-flags",
            "SYN,ACK",
            "SYN,ACK",
            "-j",
            "DROP",
        ],
        "10000",
    );
    masquerade(&net);
    let (_, server_lines, out) =
        connect_times_out(&net, (client_node, server_node), 10000, "synack");
    assert!(
        !findings(&server_lines, "return_path_blocked").is_empty(),
        "{}",
        dump(&server_lines)
    );
    let serious = serious(&out);
    assert_eq!(
        serious.len(),
        1,
        "one verdict for one connection:\n{}",
        dump(&out)
    );
    let lost = serious[0];
    assert_eq!(lost["kind"], "synack_lost_on_return", "{}", dump(&out));
    assert_eq!(lost["joined_by"], "isn", "through the NAT, by ISN");
    assert_eq!(nodes_of(lost), ["node-client", "node-server"]);
    let summary = lost["summary"].as_str().unwrap();
    assert!(summary.contains("received its SYN"), "{summary}");
    assert!(summary.contains("A NAT in between"), "{summary}");
    let ends = lost["ends"].as_array().unwrap();
    assert_eq!(ends[0]["isn_sent"], ends[1]["isn_received"], "{lost}");
    assert!(
        lost["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "synack_retransmit" && e["node"] == "node-server")
    );
}

#[test]
fn a_reset_neither_end_sent_is_a_proven_middlebox_reset() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10000);
    let client_node = node(&net.client, "node-client", &["--ports", "10000"]);
    let server_node = node(&net.server, "node-server", &["--ports", "10000"]);
    let (stop, server) = echo_server(&net.server, target);
    let (established_tx, established_rx) = mpsc::channel();
    let (rule_tx, rule_rx) = mpsc::channel::<()>();
    let client = net.client.run("st-odbc", move || {
        let mut stream = connect(target).expect("connect");
        let mut buf = [0u8; 2];
        stream.write_all(b"select 1").unwrap();
        stream.read_exact(&mut buf).unwrap();
        established_tx.send(stream.local_addr().unwrap()).unwrap();
        rule_rx.recv().unwrap();
        // The router answers this for the server, with a RST.
        stream.write_all(b"fetch").unwrap();
        stream.read_exact(&mut buf).map_err(|e| e.kind())
    });
    let local = established_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    exec_in(
        &net.router,
        &[
            "iptables",
            "-I",
            "FORWARD",
            "-p",
            "tcp",
            "-s",
            &net.client_ip.to_string(),
            "--dport",
            "10000",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    rule_tx.send(()).unwrap();
    let outcome = client.join().unwrap();
    assert!(outcome.is_err(), "the client's read failed");
    // The server closes its end later: the client's kernel answers with a RST of its own.
    settle();
    drop(stop);
    server.join().unwrap();
    settle();
    let (client_lines, server_lines) = (client_node.stop(), server_node.stop());
    let files = save(&[
        ("node-client-rst", &client_lines),
        ("node-server-rst", &server_lines),
    ]);
    let out = correlate(&[&files[0], &files[1]], None);
    let ours: Vec<&Value> = serious(&out)
        .into_iter()
        .filter(|f| f["ends"].is_array() || f["src"] == local.to_string().as_str())
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one verdict for one connection:\n{}",
        dump(&out)
    );
    let reset = ours[0];
    assert_eq!(reset["kind"], "middlebox_reset", "{}", dump(&out));
    assert_eq!(reset["src"], local.to_string().as_str());
    assert_eq!(nodes_of(reset), ["node-client", "node-server"]);
    let summary = reset["summary"].as_str().unwrap();
    assert!(summary.contains("never sent"), "{summary}");
}

#[test]
fn an_idle_flow_the_nat_forgot_is_one_finding_from_both_ends() {
    const NAT_IDLE_S: u64 = 4;
    // A packet of a flow the NAT forgot is dropped (as Azure's NAT does).
    let net = nat_router(Forgotten::Drop, NAT_IDLE_S);
    let target = SocketAddr::new(net.server_ip, 10000);
    let idle = format!("{NAT_IDLE_S}s");
    let args = ["--ports", "10000", "--nat-idle", &idle];
    let client_node = node(&net.client, "node-client", &args);
    let server_node = node(&net.server, "node-server", &args);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (late_tx, late_rx) = mpsc::channel::<()>();
    let server = net.server.run("st-hs2", move || {
        let listener = TcpListener::bind(target).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        conn.write_all(b"ok").unwrap();
        // The server talks to a client that, for the NAT, is gone.
        late_rx.recv().unwrap();
        let _ = conn.write_all(b"late!");
        thread::sleep(Duration::from_secs(2 * NAT_IDLE_S));
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let local = write_after_idle(&net, target, NAT_IDLE_S);
    late_tx.send(()).unwrap();
    server.join().unwrap();
    settle();
    let (client_lines, server_lines) = (client_node.stop(), server_node.stop());
    assert!(
        !findings(&server_lines, "half_open").is_empty(),
        "{}",
        dump(&server_lines)
    );
    let files = save(&[
        ("node-client-idle", &client_lines),
        ("node-server-idle", &server_lines),
    ]);
    let out = correlate(&[&files[0], &files[1]], None);
    let joined: Vec<&Value> = out
        .iter()
        .filter(|f| f["kind"] == "nat_idle_timeout" && f["ends"].is_array())
        .collect();
    assert_eq!(joined.len(), 1, "{}", dump(&out));
    let broken = joined[0];
    assert_eq!(broken["severity"], "error");
    assert_eq!(broken["src"], local.to_string().as_str(), "{broken}");
    let mut nodes = nodes_of(broken);
    nodes.sort_unstable();
    assert_eq!(nodes, ["node-client", "node-server"]);
    let summary = broken["summary"].as_str().unwrap();
    assert!(summary.contains("both ends still held it"), "{summary}");
    // No separate half_open or nat_idle_timeout of the same connection is left.
    let left = out
        .iter()
        .filter(|f| {
            !f["ends"].is_array() && (f["kind"] == "half_open" || f["kind"] == "nat_idle_timeout")
        })
        .count();
    assert_eq!(left, 0, "{}", dump(&out));
}
