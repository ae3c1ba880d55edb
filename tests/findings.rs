//! Root integration tests of the findings: each failure mode reproduced for real in a client /
//! router / server namespace chain with iptables rules, asserting on the finding lines the
//! binary prints (kind, endpoints, process, evidence, remedy).

mod support;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Routed, Tracer, abort_on_close, connect, dump, exec_in, findings, findings_at, settle,
    total_count,
};

fn pid() -> u64 {
    u64::from(std::process::id())
}

/// The one finding of `kind` whose `dst` (or, for server-side kinds, `src`) is `endpoint`.
fn finding_for<'a>(lines: &'a [Value], kind: &str, field: &str, endpoint: &str) -> &'a Value {
    let matching: Vec<&Value> = findings(lines, kind)
        .into_iter()
        .filter(|f| f[field] == endpoint && f["update_of"].is_null())
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one {kind} with {field}={endpoint}:\n{}",
        dump(lines)
    );
    matching[0]
}

fn assert_actionable(finding: &Value, lines: &[Value]) {
    assert!(
        finding["remedy"].as_str().is_some_and(|r| r.len() > 40),
        "a concrete remedy: {}",
        dump(lines)
    );
    assert!(
        finding["evidence"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "evidence: {}",
        dump(lines)
    );
}

fn listen(
    ns: &support::Netns,
    comm: &str,
    addr: SocketAddr,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<TcpListener>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = ns.run(comm, move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        listener
    });
    (ready_rx, handle)
}

#[test]
fn a_refused_connect_between_two_namespaces_is_one_finding_naming_both() {
    // Both ends on this host (two pods of one node): the server's stack sends the RST and
    // the client receives it; one incident, one verdict, the client's.
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start("7337");
    let error = net
        .client
        .run("st-exec", move || {
            connect(target).map(|_| ()).unwrap_err().kind()
        })
        .join()
        .unwrap();
    assert_eq!(error, ErrorKind::ConnectionRefused);
    settle();
    let lines = tracer.stop();
    let refused = finding_for(&lines, "connect_refused", "dst", &target.to_string());
    assert_eq!(refused["severity"], "error");
    assert_eq!(refused["thread"], "st-exec");
    assert_eq!(
        refused["comm"],
        process_comm().as_str(),
        "the process's name"
    );
    assert_eq!(refused["pid"], pid());
    assert_eq!(refused["netns"], net.client.inode());
    assert_eq!(refused["service"], "Spark external shuffle service");
    assert!(
        refused["src"]
            .as_str()
            .unwrap()
            .starts_with(&net.client_ip.to_string())
    );
    assert!(
        refused["remedy"]
            .as_str()
            .unwrap()
            .contains("spark.shuffle.service")
    );
    assert_actionable(refused, &lines);
    // The server's own stack sent that RST: the finding names its namespace, and gives no
    // second verdict.
    let peer = &refused["peer"];
    assert_eq!(peer["netns"], net.server.inode(), "{}", dump(&lines));
    assert_eq!(peer["side"], "server");
    assert!(
        refused["summary"].as_str().unwrap().contains(&format!(
            "nothing listens on port 7337 in network namespace {}",
            net.server.inode()
        )),
        "{}",
        dump(&lines)
    );
    assert!(
        refused["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "reset_sent" && e["reason"] == "NO_SOCKET"),
        "the server end's evidence: {}",
        dump(&lines)
    );
    for kind in ["local_reset", "middlebox_reset", "peer_reset"] {
        assert!(findings(&lines, kind).is_empty(), "{}", dump(&lines));
    }
}

/// The name of this test process (its main thread's comm), as findings give it in `comm`.
fn process_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim_end()
        .to_owned()
}

/// Sends one bare TCP ACK from `from` to `to` through a raw socket (no connection behind it):
/// what a NAT that forgot a flow, or a late retransmission, delivers to a port whose
/// connection is gone.
fn send_stray_ack(net: &Routed, from: IpAddr, to: SocketAddr) {
    let script = format!(
        r#"
import socket, struct
src, dst, sport, dport = "{from}", "{ip}", 40917, {port}
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, 0x10, 65535, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendto(tcp, (dst, 0))
"#,
        ip = to.ip(),
        port = to.port()
    );
    exec_in(&net.client, &["/usr/bin/python3", "-c", &script]);
}

#[test]
fn a_late_segment_to_a_closed_port_is_not_a_port_nobody_listens_on() {
    // The server's stack answers a segment that is not a SYN with a RST, socket or no socket:
    // that says the connection is gone here, not that nothing listens (only a SYN's RST does).
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start("7337");
    send_stray_ack(&net, net.client_ip, target);
    settle();
    let lines = tracer.stop();
    let local = finding_for(&lines, "local_reset", "src", &target.to_string());
    assert_eq!(local["netns"], net.server.inode(), "{}", dump(&lines));
    assert_eq!(local["severity"], "info", "{}", dump(&lines));
    let summary = local["summary"].as_str().unwrap();
    assert!(
        summary.contains("belongs to no connection here"),
        "{summary}"
    );
    for text in [summary, local["remedy"].as_str().unwrap()] {
        assert!(!text.contains("nothing listens"), "{text}");
    }
}

#[test]
fn dropped_syns_are_connect_timeout_updated_when_the_socket_gives_up() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10001);
    exec_in(
        &net.server,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "10001", "-j", "DROP",
        ],
    );
    // One SYN retransmit, then ETIMEDOUT after ~3 s instead of ~2 min.
    exec_in(
        &net.client,
        &["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"],
    );
    let tracer = Tracer::start("10001");
    let error = net
        .client
        .run("st-connect", move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(20))
                .map(|_| ())
                .unwrap_err()
                .raw_os_error()
        })
        .join()
        .unwrap();
    assert_eq!(error, Some(libc::ETIMEDOUT));
    settle();
    let lines = tracer.stop();
    let timeout = finding_for(&lines, "connect_timeout", "dst", &target.to_string());
    assert_eq!(timeout["thread"], "st-connect");
    assert_eq!(timeout["pid"], pid());
    assert_eq!(timeout["count"], 1);
    assert!(
        timeout["remedy"]
            .as_str()
            .unwrap()
            .contains("security group")
    );
    assert_actionable(timeout, &lines);
    let update = findings(&lines, "connect_timeout")
        .into_iter()
        .find(|f| f["update_of"] == timeout["id"])
        .unwrap_or_else(|| panic!("an update when the socket gave up:\n{}", dump(&lines)));
    assert_eq!(update["count"], 0);
    assert!(
        update["summary"].as_str().unwrap().contains("ETIMEDOUT"),
        "{}",
        dump(&lines)
    );
    assert!(findings(&lines, "connect_refused").is_empty());
}

#[test]
fn icmp_host_unreachable_from_a_router() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 9083);
    exec_in(
        &net.router,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "9083",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    );
    let tracer = Tracer::start("9083");
    let error = net
        .client
        .run("st-metastore", move || {
            connect(target).map(|_| ()).unwrap_err().raw_os_error()
        })
        .join()
        .unwrap();
    assert_eq!(error, Some(libc::EHOSTUNREACH));
    settle();
    let lines = tracer.stop();
    let unreachable = finding_for(&lines, "host_unreachable", "dst", &target.to_string());
    assert_eq!(unreachable["thread"], "st-metastore");
    assert!(
        unreachable["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["error"] == "EHOSTUNREACH"),
        "{}",
        dump(&lines)
    );
    assert_actionable(unreachable, &lines);
    assert!(findings(&lines, "connect_refused").is_empty());
}

#[test]
fn reset_from_a_router_is_a_middlebox_reset() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start("7337");
    let (ready, server) = listen(&net.server, "st-shuffle", target);
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let listener = server.join().unwrap();
    // A good flow first: the client learns the TTL the server's packets arrive with.
    let first = net
        .client
        .run("st-exec", move || {
            let mut stream = connect(target).expect("first connect");
            stream.write_all(b"ping").unwrap();
            stream.local_addr().unwrap()
        })
        .join()
        .unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).unwrap();
    // Now the router answers new connections to 7337 with a RST of its own.
    exec_in(
        &net.router,
        &[
            "iptables",
            "-I",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "7337",
            "--syn",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    let error = net
        .client
        .run("st-exec", move || {
            connect(target).map(|_| ()).unwrap_err().kind()
        })
        .join()
        .unwrap();
    assert_eq!(error, ErrorKind::ConnectionRefused);
    settle();
    let lines = tracer.stop();
    let forged = finding_for(&lines, "middlebox_reset", "dst", &target.to_string());
    assert_eq!(forged["thread"], "st-exec");
    assert_ne!(forged["src"], first.to_string().as_str(), "the second flow");
    let rst = forged["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "reset_received")
        .unwrap_or_else(|| panic!("RST in evidence: {}", dump(&lines)));
    assert_eq!(rst["ttl"], 64, "the router's own RST: {}", dump(&lines));
    assert_eq!(
        rst["peer_ttl"],
        63,
        "the server, one hop away: {}",
        dump(&lines)
    );
    assert_actionable(forged, &lines);
    assert!(
        findings(&lines, "connect_refused").is_empty(),
        "{}",
        dump(&lines)
    );
}

#[test]
fn dropped_synacks_are_return_path_blocked_on_the_server() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10000);
    exec_in(
        &net.router,
        &[
            "iptables",
            "-A",
            "FORWARD",
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
    );
    let tracer = Tracer::start("10000");
    let (ready, server) = listen(&net.server, "st-hs2", target);
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let _listener = server.join().unwrap();
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
    assert_eq!(error, ErrorKind::TimedOut);
    settle();
    let lines = tracer.stop();
    let blocked = finding_for(&lines, "return_path_blocked", "src", &target.to_string());
    assert_eq!(blocked["netns"], net.server.inode());
    assert_eq!(blocked["side"], "server");
    assert_eq!(
        blocked["thread"],
        "st-hs2",
        "the listening process: {}",
        dump(&lines)
    );
    assert!(
        blocked["dst"]
            .as_str()
            .unwrap()
            .starts_with(&net.client_ip.to_string())
    );
    assert_actionable(blocked, &lines);
    // The client, for its part, sees its SYNs go unanswered.
    let timeout = finding_for(&lines, "connect_timeout", "dst", &target.to_string());
    assert_eq!(timeout["thread"], "st-beeline");
}

#[test]
fn random_loss_on_an_established_flow_is_a_retransmit_storm() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start_with(&[
        "--ports",
        "7337",
        "--storm-retransmits",
        "5",
        "--storm-window",
        "10s",
    ]);
    let (ready, server) = listen(&net.server, "st-shuffle", target);
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let listener = server.join().unwrap();
    let reader = net.server.run("st-shuffle", move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break total,
                Ok(n) => total += n,
            }
        }
    });
    let (connected_tx, connected_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let writer = net.client.run("st-fetch", move || {
        let mut stream = connect(target).expect("connect");
        connected_tx.send(stream.local_addr().unwrap()).unwrap();
        go_rx.recv().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0usize;
        while sent < 2 * 1024 * 1024 && Instant::now() < deadline {
            stream.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        sent
    });
    let local = connected_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Loss only once the connection is up: a quarter of the data segments vanish.
    exec_in(
        &net.router,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "7337",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.25",
            "-j",
            "DROP",
        ],
    );
    go_tx.send(()).unwrap();
    let sent = writer.join().unwrap();
    assert!(sent > 0);
    assert_eq!(reader.join().unwrap(), sent);
    settle();
    let lines = tracer.stop();
    // A storm that lasts longer than the window is reported again for the next window.
    let storms: Vec<&Value> = findings(&lines, "retransmit_storm")
        .into_iter()
        .filter(|f| f["src"] == local.to_string().as_str())
        .collect();
    assert!(
        !storms.is_empty(),
        "a retransmit_storm for {local}:\n{}",
        dump(&lines)
    );
    let storm = storms[0];
    assert_eq!(storm["dst"], target.to_string().as_str());
    assert_eq!(storm["thread"], "st-fetch");
    assert_eq!(storm["pid"], pid());
    assert_eq!(storm["severity"], "warning");
    assert_actionable(storm, &lines);
}

#[test]
fn a_server_abort_seen_from_both_ends_is_one_warning() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start("7337");
    let (ready, server) = listen(&net.server, "st-shuffle", target);
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let listener = server.join().unwrap();
    let aborter = net.server.run("st-shuffle", move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"ok").unwrap();
        abort_on_close(&conn);
        drop(conn); // RST
    });
    let error = net
        .client
        .run("st-exec", move || {
            let mut stream = connect(target).expect("connect");
            stream.write_all(b"open").unwrap();
            let mut buf = [0u8; 2];
            stream.read_exact(&mut buf).unwrap();
            let mut rest = [0u8; 16];
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match stream.read(&mut rest) {
                    Err(e) => break e.kind(),
                    Ok(_) if Instant::now() > deadline => panic!("no reset"),
                    Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .join()
        .unwrap();
    aborter.join().unwrap();
    assert_eq!(error, ErrorKind::ConnectionReset);
    settle();
    let lines = tracer.stop();
    // Both ends are on this host: one verdict, the server's (it chose to abort), a warning
    // since the client's connection failed, naming the client as its peer.
    assert!(
        findings(&lines, "peer_reset").is_empty(),
        "{}",
        dump(&lines)
    );
    let local = finding_for(&lines, "local_reset", "src", &target.to_string());
    assert_eq!(local["severity"], "warning", "{}", dump(&lines));
    assert_eq!(local["side"], "server");
    assert_eq!(local["thread"], "st-shuffle");
    assert_eq!(local["netns"], net.server.inode());
    let peer = &local["peer"];
    assert_eq!(peer["thread"], "st-exec", "{}", dump(&lines));
    assert_eq!(peer["netns"], net.client.inode());
    assert_eq!(peer["side"], "client");
    let rst = local["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "reset_received")
        .unwrap_or_else(|| panic!("the client's RST in evidence: {}", dump(&lines)));
    assert_eq!(
        rst["ttl"],
        rst["peer_ttl"],
        "the peer's own RST: {}",
        dump(&lines)
    );
    assert!(
        local["remedy"]
            .as_str()
            .unwrap()
            .contains("serving port 7337"),
        "{}",
        dump(&lines)
    );
    assert_actionable(local, &lines);
    assert!(
        findings(&lines, "middlebox_reset").is_empty(),
        "{}",
        dump(&lines)
    );
}

/// A Python server in `ns` on `addr` that sends 512 bytes to the first client and then waits
/// for it, printing `ready` once it listens and then what ended the connection.
fn python_server(ns: &support::Netns, addr: SocketAddr) -> std::process::Child {
    let script = format!(
        r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ip}", {port}))
s.listen(8)
print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"x" * 512)
c.settimeout(10)
try:
    print("eof" if c.recv(16) == b"" else "data", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"#,
        ip = addr.ip(),
        port = addr.port()
    );
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 server")
}

#[test]
fn a_client_closing_with_unread_data_is_its_own_info_finding_not_a_server_error() {
    // A server process that listens before tracing starts: the tracer finds it in /proc.
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 10000);
    let mut server = python_server(&net.server, target);
    let mut said = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let tracer = Tracer::start("10000");
    net.client
        .run("st-beeline", move || {
            let stream = connect(target).expect("connect");
            std::thread::sleep(Duration::from_millis(300));
            drop(stream); // 512 bytes unread: the kernel resets
        })
        .join()
        .unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut said, &mut line).unwrap();
    assert_eq!(line.trim(), "reset", "the server saw the reset");
    server.wait().unwrap();
    settle();
    let lines = tracer.stop();
    assert!(
        findings(&lines, "peer_reset").is_empty(),
        "{}",
        dump(&lines)
    );
    let local = finding_for(&lines, "local_reset", "dst", &target.to_string());
    assert_eq!(local["severity"], "info", "{}", dump(&lines));
    assert_eq!(local["side"], "client");
    assert_eq!(local["thread"], "st-beeline");
    let peer = &local["peer"];
    assert_eq!(peer["side"], "server", "{}", dump(&lines));
    assert_eq!(peer["netns"], net.server.inode());
    // Listening before the tracer started: named from /proc.
    assert_eq!(peer["pid"], server.id(), "{}", dump(&lines));
    assert_eq!(peer["comm"], "python3", "{}", dump(&lines));
    let remedy = local["remedy"].as_str().unwrap();
    assert!(remedy.contains("Nothing to fix on the server"), "{remedy}");
    assert!(remedy.contains("port 10000"), "{remedy}");
    let ephemeral = local["src"].as_str().unwrap().rsplit(':').next().unwrap();
    assert!(!remedy.contains(&format!("port {ephemeral}")), "{remedy}");
}

fn probe(net: &Routed, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.client.name,
            env!("CARGO_BIN_EXE_shuffletrace"),
            "probe",
        ])
        .args(args)
        .output()
        .expect("run shuffletrace probe");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    (output.status.code(), lines)
}

#[test]
fn probe_reports_every_port_with_its_finding() {
    let net = Routed::new();
    let server = net.server_ip.to_string();
    exec_in(
        &net.server,
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "10001", "-j", "DROP",
        ],
    );
    exec_in(
        &net.router,
        &[
            "iptables",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "9083",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    );
    let (ready, listener) = listen(&net.server, "st-hs2", SocketAddr::new(net.server_ip, 10000));
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    let _listener = listener.join().unwrap();
    let (code, lines) = probe(
        &net,
        &[
            &server,
            "--ports",
            "7337,9083,10000,10001",
            "--timeout",
            "3s",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, Some(1), "a port is not open: {}", dump(&lines));
    let schema: Value =
        serde_json::from_str(include_str!("../schema/shuffletrace.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for line in &lines {
        assert!(validator.is_valid(line), "schema: {line}");
    }
    let by_port = |port: u64| {
        lines
            .iter()
            .find(|l| l["port"] == port)
            .unwrap_or_else(|| panic!("port {port}: {}", dump(&lines)))
    };
    let expect = [
        (7337, "refused", Some("connect_refused")),
        (9083, "unreachable", Some("host_unreachable")),
        (10000, "open", None),
        (10001, "timeout", Some("connect_timeout")),
    ];
    for (port, result, finding) in expect {
        let line = by_port(port);
        assert_eq!(line["result"], result, "{}", dump(&lines));
        assert_eq!(line["finding"].as_str(), finding, "{}", dump(&lines));
        if finding.is_some() {
            assert!(line["remedy"].as_str().is_some_and(|r| !r.is_empty()));
        }
    }
    assert_eq!(by_port(7337)["service"], "Spark external shuffle service");

    let (code, lines) = probe(&net, &[&server, "--ports", "10000", "--format", "json"]);
    assert_eq!(code, Some(0), "all open: {}", dump(&lines));
}

/// Two threads refusing at full speed take socket cookies in step (each CPU from its own
/// batch of 4,096), so anything the kernel keeps for a counted refusal in a table indexed by
/// cookies' low bits collides. Every refusal is counted once, and every `connect_refused`
/// names the process: an error report, sent when such a mark was overwritten, became a
/// second, ownerless finding for a refusal already counted. And what the kernel keeps for
/// them goes with their sockets, whether connect() blocked (TCP clears the socket's ports
/// before it is destroyed) or not: 100,000 refusals through a 4,096-entry flow table never
/// fill it (a slot left behind by each would, and the rest would be shipped in full).
#[test]
fn a_refusal_storm_from_two_threads_at_full_speed_is_counted_exactly_once() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start_with(&["--ports", "7337", "--max-flows", "4096"]);
    let per_thread = 50_000;
    let threads: Vec<_> = [true, false]
        .into_iter()
        .map(|blocking| {
            net.client.run("st-storm2", move || {
                (0..per_thread)
                    .filter(|_| {
                        if blocking {
                            std::net::TcpStream::connect(target).is_err()
                        } else {
                            connect(target).is_err()
                        }
                    })
                    .count()
            })
        })
        .collect();
    let refused: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(refused, 2 * per_thread);
    settle();
    let lines = tracer.stop();
    let client = findings_at(&lines, "connect_refused", "dst", target);
    let total = total_count(&client);
    let ownerless: Vec<&&Value> = client
        .iter()
        .filter(|f| f["thread"] != "st-storm2")
        .collect();
    assert!(ownerless.is_empty(), "{ownerless:?}");
    assert_eq!(total, refused as u64, "{}", dump(&lines));
    let stats = support::last_stats(&lines);
    assert_eq!(stats["owner_table_full"], 0, "{stats}");
    assert_eq!(stats["lost_events"], 0, "{stats}");
    assert!(
        client.len() < 100,
        "{} lines: folded into counts",
        client.len()
    );
}

#[test]
fn a_refusal_storm_is_counted_in_the_kernel_and_every_count_is_exact() {
    let net = Routed::new();
    let target = SocketAddr::new(net.server_ip, 7337);
    let tracer = Tracer::start_with(&["--ports", "7337", "--aggregate-window", "400ms"]);
    let attempts = 600;
    let refused = net
        .client
        .run("st-storm", move || {
            (0..attempts)
                .filter(|_| {
                    std::thread::sleep(Duration::from_millis(2));
                    connect(target).is_err()
                })
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(refused, attempts);
    settle();
    let lines = tracer.stop();
    let client = findings_at(&lines, "connect_refused", "dst", target);
    let server = findings_at(&lines, "local_reset", "src", target);
    assert_eq!(total_count(&client), attempts as u64, "{}", dump(&lines));
    // Both ends are on this host: the server's RSTs are the same refusals, joined to them.
    assert_eq!(total_count(&server), 0, "{}", dump(&lines));
    // Folded: the first refusal of each window in full, the rest as counts.
    assert!(client.len() < attempts / 10, "{} lines", client.len());
    for finding in &client {
        assert_eq!(finding["thread"], "st-storm", "{finding}");
        assert_eq!(finding["pid"], pid());
        assert_eq!(finding["netns"], net.client.inode());
        assert!(!finding["evidence"].as_array().unwrap().is_empty());
        assert_eq!(finding["peer"]["netns"], net.server.inode(), "{finding}");
    }
    let sent = support::events(&lines, "reset_received")
        .into_iter()
        .filter(|e| e["dst"] == target.to_string().as_str())
        .count();
    assert!(sent < attempts / 5, "{sent} RSTs sent one by one");
    let stats = support::last_stats(&lines);
    assert!(
        stats["repeats_counted"].as_u64().unwrap() >= 2 * (attempts - attempts / 5) as u64,
        "{stats}"
    );
    assert_eq!(stats["lost_events"], 0);
}
