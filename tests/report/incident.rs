//! A bad night on one executor node, as `--trace-dir` records it: a middlebox resets an idle
//! shuffle connection (its RST's TTL is not the server's), HiveServer2 connects time out with
//! their SYNs retransmitted, a Spark Connect server's SYN-ACKs go unanswered, and a JDBC client
//! speaks TLS to a plaintext port. Every line is shaped as shuffletrace writes it (the test
//! checks each against the schema), and one process names itself `<script>`: trace text is
//! untrusted.

use serde_json::{Value, json};

pub const NODE: &str = "exec-node-7";
/// The process name that must come out escaped.
pub const HOSTILE_COMM: &str = "<script>alert('st')</script>";

fn at(time: &str) -> String {
    format!("2026-11-22T{time}Z")
}

fn ev(time: &str, event: &str, src: &str, dst: &str, detail: Value) -> Value {
    let mut e = json!({"ts": at(time), "event": event, "src": src, "dst": dst});
    if let (Some(e), Some(detail)) = (e.as_object_mut(), detail.as_object()) {
        e.extend(detail.clone());
    }
    e
}

struct Finding<'a> {
    id: u64,
    kind: &'a str,
    severity: &'a str,
    time: &'a str,
    src: &'a str,
    dst: &'a str,
    side: &'a str,
    service: &'a str,
    comm: &'a str,
    summary: &'a str,
    remedy: &'a str,
    evidence: Vec<Value>,
    count: u64,
}

impl Finding<'_> {
    fn line(&self) -> Value {
        json!({
            "type": "finding", "v": 1, "id": self.id, "kind": self.kind,
            "severity": self.severity, "ts": at(self.time), "node": NODE, "src": self.src,
            "dst": self.dst, "service": self.service, "netns": 4026532281u64,
            "pid": 31337 + self.id, "comm": self.comm, "uid": 185, "side": self.side,
            "summary": self.summary, "evidence": self.evidence, "remedy": self.remedy,
            "count": self.count, "first_ts": at(self.time), "last_ts": at(self.time)
        })
    }
}

/// The trace's lines, in the order they were written.
pub fn lines() -> Vec<Value> {
    let (exec, shuffle) = ("10.42.1.15:46822", "10.42.3.9:7337");
    let (hive_client, hive) = ("10.42.1.15:47010", "10.42.5.20:10000");
    let (connect_server, connect_client) = ("10.42.1.15:10001", "10.9.0.4:52114");
    let (jdbc, plain) = ("10.42.1.15:48010", "10.42.6.2:10000");
    let middlebox = Finding {
        id: 1,
        kind: "middlebox_reset",
        severity: "error",
        time: "10:05:51.204113000",
        src: exec,
        dst: shuffle,
        side: "client",
        service: "Spark external shuffle service",
        comm: "java",
        summary: "A RST for 10.42.1.15:46822 -> 10.42.3.9:7337 arrived with TTL 64 while the \
                  peer's own packets arrive with TTL 61: a device in between (firewall, NAT \
                  gateway, load balancer) reset the connection, not 10.42.3.9.",
        remedy: "Find the device between 10.42.1.15 and 10.42.3.9 that resets flows: \
                 `traceroute -T -p 7337 10.42.3.9`; a NAT gateway drops flows idle past its \
                 timeout, so keep shuffle connections alive below it \
                 (`net.ipv4.tcp_keepalive_time=300` in the executor's network namespace).",
        evidence: vec![
            ev(
                "10:00:00.000000000",
                "state_change",
                exec,
                shuffle,
                json!({"old_state": "CLOSE", "new_state": "SYN_SENT"}),
            ),
            ev(
                "10:00:00.000912000",
                "state_change",
                exec,
                shuffle,
                json!({"old_state": "SYN_SENT", "new_state": "ESTABLISHED"}),
            ),
            ev(
                "10:05:51.204113000",
                "reset_received",
                exec,
                shuffle,
                json!({"state": "ESTABLISHED", "ttl": 64, "peer_ttl": 61}),
            ),
            ev(
                "10:05:51.204150000",
                "socket_error",
                exec,
                shuffle,
                json!({"state": "ESTABLISHED", "error": "ECONNRESET"}),
            ),
        ],
        // Six idle shuffle connections reset alike, folded into one line.
        count: 6,
    };
    let timeout = |id: u64, time: &'static str, count: u64| Finding {
        id,
        kind: "connect_timeout",
        severity: "error",
        time,
        src: hive_client,
        dst: hive,
        side: "client",
        service: "HiveServer2 / Thrift",
        comm: HOSTILE_COMM,
        summary: "Connection to 10.42.5.20:10000 timed out: the SYN was retransmitted without an \
                  answer (a firewall, security group or NACL drops it).",
        remedy: "Allow TCP 10000 from 10.42.1.15 to 10.42.5.20 in the security group, NACL and \
                 host firewall on the way: `nc -vz 10.42.5.20 10000` from this node must connect.",
        evidence: vec![
            ev(
                "10:07:00.000000000",
                "state_change",
                hive_client,
                hive,
                json!({"old_state": "CLOSE", "new_state": "SYN_SENT"}),
            ),
            ev(
                "10:07:01.021000000",
                "retransmit",
                hive_client,
                hive,
                json!({"state": "SYN_SENT"}),
            ),
            ev(
                "10:07:03.069000000",
                "retransmit",
                hive_client,
                hive,
                json!({"state": "SYN_SENT"}),
            ),
            ev(
                "10:07:07.165000000",
                "retransmit",
                hive_client,
                hive,
                json!({"state": "SYN_SENT"}),
            ),
            ev(
                "10:07:15.357000000",
                "socket_error",
                hive_client,
                hive,
                json!({"state": "SYN_SENT", "error": "ETIMEDOUT"}),
            ),
        ],
        count,
    };
    let return_path = Finding {
        id: 4,
        kind: "return_path_blocked",
        severity: "error",
        time: "10:09:02.040000000",
        src: connect_server,
        dst: connect_client,
        side: "server",
        service: "Spark Connect",
        comm: "java",
        summary: "10.9.0.4 sent SYNs to 10.42.1.15:10001 but never the final ACK: the SYN-ACKs were \
                  retransmitted unanswered (a stateless ACL or an asymmetric route drops the way \
                  back).",
        remedy: "Allow the return traffic from 10.42.1.15:10001 to 10.9.0.4 (ephemeral ports \
                 1024-65535) in the NACL or stateless firewall, and check that the route back \
                 to 10.9.0.4 leaves through the same gateway.",
        evidence: vec![
            ev(
                "10:09:01.020000000",
                "synack_retransmit",
                connect_server,
                connect_client,
                json!({"state": "SYN_RECV"}),
            ),
            ev(
                "10:09:02.040000000",
                "synack_retransmit",
                connect_server,
                connect_client,
                json!({"state": "SYN_RECV"}),
            ),
        ],
        count: 1,
    };
    let tls = Finding {
        id: 5,
        kind: "tls_mismatch",
        severity: "error",
        time: "10:11:30.000410000",
        src: jdbc,
        dst: plain,
        side: "client",
        service: "HiveServer2 / Thrift",
        comm: "beeline",
        summary: "beeline sent a TLS ClientHello to 10.42.6.2:10000, which answered with a RST \
                  and no TLS record: the server speaks plaintext.",
        remedy: "Connect without TLS (drop `ssl=true` from the JDBC URL) or enable TLS on \
                 HiveServer2 (`hive.server2.use.SSL=true` with its keystore).",
        evidence: vec![
            ev(
                "10:11:30.000000000",
                "state_change",
                jdbc,
                plain,
                json!({"old_state": "CLOSE", "new_state": "SYN_SENT"}),
            ),
            ev(
                "10:11:30.000300000",
                "state_change",
                jdbc,
                plain,
                json!({"old_state": "SYN_SENT", "new_state": "ESTABLISHED"}),
            ),
            ev(
                "10:11:30.000350000",
                "first_payload",
                jdbc,
                plain,
                json!({"state": "ESTABLISHED", "class": "tls_client_hello", "direction": "sent"}),
            ),
            ev(
                "10:11:30.000410000",
                "reset_received",
                jdbc,
                plain,
                json!({"state": "ESTABLISHED", "ttl": 63, "peer_ttl": 63}),
            ),
        ],
        count: 1,
    };
    let start = json!({
        "type": "start", "v": 1, "ts": at("09:59:58.000000000"), "node": NODE,
        "version": "0.1.0", "kernel": "6.12.48+deb12-cloud-amd64",
        "ports": [7337, 10000, 10001], "attached": ["inet_sock_set_state"], "missing": [],
        "nat_idle_s": 350.0, "nat_idle_profile": "aws"
    });
    vec![
        start,
        middlebox.line(),
        timeout(2, "10:07:15.357000000", 1).line(),
        timeout(3, "10:08:15.000000000", 3).line(),
        return_path.line(),
        tls.line(),
    ]
}
