//! Root integration tests: real network namespaces joined by a veth pair, real listeners and
//! connections, and the real `shuffletrace` binary, asserting on the JSON lines it prints.
//!
//! Run as root (`cargo xtask test` does). Each test builds its own namespaces, named after the
//! process id, and removes them when it ends, also when it fails.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// A named network namespace, deleted on drop (with the veth end inside it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: String) -> Self {
        // A namespace left over by a killed run of the same name.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// The namespace inode, as the tracer reports it.
    fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).expect("netns file").ino()
    }

    /// Runs `f` on a new thread named `comm` (the kernel's comm for it) inside this namespace.
    fn run<T: Send + 'static>(
        &self,
        comm: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::Builder::new()
            .name(comm.to_owned())
            .spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only; the fd is valid.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns {path}");
                f()
            })
            .expect("spawn thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A client and a server namespace joined by a veth pair, IPv4 and IPv6.
struct Topology {
    client: Netns,
    server: Netns,
    server_v4: IpAddr,
    server_v6: IpAddr,
}

impl Topology {
    fn new() -> Self {
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let client = Netns::new(format!("st-c{tag}"));
        let server = Netns::new(format!("st-s{tag}"));
        let (veth_c, veth_s) = (format!("stc{tag}"), format!("sts{tag}"));
        ip(&[
            "link", "add", &veth_c, "type", "veth", "peer", "name", &veth_s,
        ]);
        ip(&["link", "set", &veth_c, "netns", &client.name]);
        ip(&["link", "set", &veth_s, "netns", &server.name]);
        let subnet = 10 + (n % 200);
        let v4 = |host: u8| format!("10.213.{subnet}.{host}/24");
        let v6 = |host: u8| format!("fd00:213:{subnet}::{host}/64");
        for (ns, dev, host) in [(&client, &veth_c, 1), (&server, &veth_s, 2)] {
            ip(&["-n", &ns.name, "addr", "add", &v4(host), "dev", dev]);
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &v6(host),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        Self {
            client,
            server,
            server_v4: format!("10.213.{subnet}.2").parse().unwrap(),
            server_v6: format!("fd00:213:{subnet}::2").parse().unwrap(),
        }
    }
}

/// The shuffletrace binary running with `--format json`.
struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tracer {
    fn start(ports: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
            .args(["--format", "json", "--ports", ports])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start shuffletrace");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        // Attached once the start line is out.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tracer
                .lines
                .recv_timeout(left)
                .expect("shuffletrace printed no start line within 30 s");
            let value: Value = serde_json::from_str(&line).expect("start line is JSON");
            tracer.seen.push(line);
            if value["type"] == "start" {
                assert_eq!(
                    value["missing"],
                    Value::Array(vec![]),
                    "all tracepoints attach here"
                );
                break;
            }
        }
        tracer
    }

    /// SIGINT, wait for a clean exit, and return every line, each validated against the schema.
    fn stop(mut self) -> Vec<Value> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for shuffletrace");
        assert!(status.success(), "shuffletrace exited with {status}");
        self.seen.extend(self.lines.iter());
        let schema: Value =
            serde_json::from_str(include_str!("../schema/shuffletrace.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let values: Vec<Value> = self
            .seen
            .iter()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if let Err(error) = validator.validate(&value) {
                    panic!("line does not match the schema: {error}\n{line}");
                }
                value
            })
            .collect();
        assert_eq!(
            values.last().map(|v| v["type"].clone()),
            Some(Value::from("stats")),
            "the last line is the stats line"
        );
        values
    }
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "event" && v["event"] == event)
        .collect()
}

fn mentions(value: &Value, endpoint: &SocketAddr) -> bool {
    let text = endpoint.to_string();
    value["src"] == text.as_str() || value["dst"] == text.as_str()
}

fn dump(lines: &[Value]) -> String {
    lines.iter().map(|v| format!("{v}\n")).collect()
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

/// Lets the last kernel events of the connections (FIN handshakes finish asynchronously)
/// happen before the tracer is stopped; stopping drains everything already recorded.
fn settle() {
    thread::sleep(Duration::from_millis(300));
}

#[test]
fn refused_connect_to_closed_port_ipv4_and_ipv6() {
    let topo = Topology::new();
    let tracer = Tracer::start("7337");
    let targets = [
        SocketAddr::new(topo.server_v4, 7337),
        SocketAddr::new(topo.server_v6, 7337),
    ];
    let errors = topo
        .client
        .run("st-refused", move || {
            targets.map(|addr| connect(addr).map(|_| ()).unwrap_err().kind())
        })
        .join()
        .unwrap();
    assert!(
        errors
            .iter()
            .all(|e| *e == std::io::ErrorKind::ConnectionRefused),
        "{errors:?}"
    );
    settle();
    let lines = tracer.stop();
    let pid = std::process::id() as u64;
    for target in targets {
        let flow: Vec<&Value> = lines
            .iter()
            .filter(|v| v["type"] == "event" && v["dst"] == target.to_string().as_str())
            .collect();
        let ctx = || format!("target {target}\n{}", dump(&lines));
        let closed = flow
            .iter()
            .find(|v| {
                v["event"] == "state_change"
                    && v["old_state"] == "SYN_SENT"
                    && v["new_state"] == "CLOSE"
            })
            .unwrap_or_else(|| panic!("no SYN_SENT -> CLOSE: {}", ctx()));
        let error = flow
            .iter()
            .find(|v| v["event"] == "socket_error")
            .unwrap_or_else(|| panic!("no socket_error: {}", ctx()));
        assert_eq!(error["error"], "ECONNREFUSED", "{}", ctx());
        let reset = flow
            .iter()
            .find(|v| v["event"] == "reset_received")
            .unwrap_or_else(|| panic!("no reset_received: {}", ctx()));
        for event in [closed, error, reset] {
            assert_eq!(event["pid"], pid, "owner pid: {}", ctx());
            assert_eq!(event["comm"], "st-refused", "owner comm: {}", ctx());
            assert_eq!(event["uid"], 0, "{}", ctx());
            assert_eq!(
                event["netns"],
                topo.client.inode(),
                "client netns: {}",
                ctx()
            );
            assert_eq!(event["side"], "client", "{}", ctx());
            assert_eq!(
                event["cookie"],
                closed["cookie"],
                "one flow, one cookie: {}",
                ctx()
            );
            assert_ne!(
                event["src"].as_str().unwrap().rsplit(':').next(),
                Some("0"),
                "{}",
                ctx()
            );
        }
        // The server's stack answered with a RST because nobody listens there.
        let sent = events(&lines, "reset_sent")
            .into_iter()
            .find(|v| v["src"] == target.to_string().as_str())
            .unwrap_or_else(|| panic!("no reset_sent from the server: {}", ctx()));
        assert_eq!(sent["reason"], "NO_SOCKET", "{}", ctx());
        assert_eq!(sent["netns"], topo.server.inode(), "{}", ctx());
        assert_eq!(sent["cookie"], 0, "{}", ctx());
    }
}

#[test]
fn successful_connect_to_open_watched_port() {
    let topo = Topology::new();
    let server_addr = SocketAddr::new(topo.server_v4, 10000);
    let (ready_tx, ready_rx) = mpsc::channel();
    let tracer = Tracer::start("7337,10000-10001");
    let server = topo.server.run("st-hs2", move || {
        let listener = TcpListener::bind(server_addr).expect("bind 10000");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong!").unwrap();
        buf
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let local = topo
        .client
        .run("st-client", move || {
            let mut stream = connect(server_addr).expect("connect to 10000");
            stream.write_all(b"ping!").unwrap();
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).unwrap();
            stream.local_addr().unwrap()
        })
        .join()
        .unwrap();
    assert_eq!(&server.join().unwrap(), b"ping!");
    settle();
    let lines = tracer.stop();
    let ctx = || dump(&lines);
    let pid = std::process::id() as u64;
    let established = events(&lines, "state_change")
        .into_iter()
        .find(|v| v["src"] == local.to_string().as_str() && v["new_state"] == "ESTABLISHED")
        .unwrap_or_else(|| panic!("no client SYN_SENT -> ESTABLISHED for {local}: {}", ctx()));
    assert_eq!(established["old_state"], "SYN_SENT");
    assert_eq!(established["dst"], server_addr.to_string().as_str());
    assert_eq!(established["comm"], "st-client");
    assert_eq!(established["pid"], pid);
    assert_eq!(established["netns"], topo.client.inode());
    assert!(
        events(&lines, "state_change")
            .iter()
            .any(|v| v["cookie"] == established["cookie"]
                && v["old_state"] == "CLOSE"
                && v["new_state"] == "SYN_SENT"),
        "connect() seen: {}",
        ctx()
    );
    // The accepted socket on the server side carries the listener's process.
    let accepted = events(&lines, "state_change")
        .into_iter()
        .find(|v| v["dst"] == local.to_string().as_str() && v["new_state"] == "ESTABLISHED")
        .unwrap_or_else(|| panic!("no server-side ESTABLISHED: {}", ctx()));
    assert_eq!(accepted["side"], "server", "{}", ctx());
    assert_eq!(accepted["comm"], "st-hs2", "{}", ctx());
    assert_eq!(accepted["netns"], topo.server.inode(), "{}", ctx());
    assert!(
        events(&lines, "socket_error").is_empty(),
        "no errors: {}",
        ctx()
    );
    assert!(
        events(&lines, "reset_received").is_empty(),
        "no resets: {}",
        ctx()
    );
}

#[test]
fn unwatched_ports_produce_no_events() {
    let topo = Topology::new();
    let unwatched = SocketAddr::new(topo.server_v4, 8080);
    let unwatched_closed = SocketAddr::new(topo.server_v6, 8081);
    let watched_closed = SocketAddr::new(topo.server_v4, 7337);
    let (ready_tx, ready_rx) = mpsc::channel();
    let tracer = Tracer::start("7337");
    let server = topo.server.run("st-web", move || {
        let listener = TcpListener::bind(unwatched).expect("bind 8080");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    topo.client
        .run("st-client", move || {
            let mut stream = connect(unwatched).expect("connect to 8080");
            stream.write_all(&[0u8; 4096]).unwrap();
            drop(stream);
            assert!(connect(unwatched_closed).is_err());
            // A watched control connection: proves the tracer was live during this test.
            assert!(connect(watched_closed).is_err());
        })
        .join()
        .unwrap();
    assert_eq!(server.join().unwrap(), 4096);
    settle();
    let lines = tracer.stop();
    let ctx = || dump(&lines);
    assert!(
        lines
            .iter()
            .any(|v| v["type"] == "event" && mentions(v, &watched_closed)),
        "the watched control flow was traced: {}",
        ctx()
    );
    for endpoint in [unwatched, unwatched_closed] {
        assert!(
            !lines
                .iter()
                .any(|v| v["type"] == "event" && mentions(v, &endpoint)),
            "no event for unwatched {endpoint}: {}",
            ctx()
        );
    }
}

#[test]
fn bad_port_list_is_a_one_line_usage_error() {
    for (list, token) in [
        ("0", "\"0\""),
        ("7337,abc", "\"abc\""),
        ("70000", "\"70000\""),
        ("", "\"\""),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
            .args(["--ports", list])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "--ports {list:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(token), "names the bad token: {stderr}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn missing_privilege_is_explained() {
    // Drop to an unprivileged user: nobody (65534).
    let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(["--duration", "1s"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("sudo"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}
