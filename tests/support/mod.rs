//! Shared by the root integration tests: network namespaces, threads inside them, and the
//! real `shuffletrace` binary whose JSON lines are validated against the schema.
#![allow(dead_code)] // each test target uses a different part

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
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

pub fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(status.success(), "ip {} failed", args.join(" "));
}

/// A named network namespace, deleted on drop (with the veth end inside it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        // A namespace left over by a killed run of the same name.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// The namespace inode, as the tracer reports it.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).expect("netns file").ino()
    }

    /// Runs `f` on a new thread named `comm` (the kernel's comm for it) inside this namespace.
    pub fn run<T: Send + 'static>(
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
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
    pub server_v4: IpAddr,
    pub server_v6: IpAddr,
}

impl Topology {
    pub fn new() -> Self {
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

/// Programs expected to be missing on the kernel under test, in attach order: none, unless
/// `SHUFFLETRACE_EXPECT_MISSING` lists them (the kernel matrix sets it for 5.10, which runs
/// degraded).
pub fn expected_missing() -> Vec<&'static str> {
    let listed = std::env::var("SHUFFLETRACE_EXPECT_MISSING").unwrap_or_default();
    listed
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| &*String::leak(name.to_owned()))
        .collect()
}

/// The shuffletrace binary running with `--format json`.
pub struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tracer {
    pub fn start(ports: &str) -> Self {
        Self::start_with(&["--ports", ports])
    }

    /// Starts `shuffletrace --format json ARGS` and waits until it is attached.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// `start_with`, with environment variables set for the tracer.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(&[], args, env, Stdio::inherit())
    }

    /// `start_with_env`, run through `wrapper` (a command that runs the rest, such as
    /// `setpriv` dropping a capability), its log written to `stderr`.
    pub fn launch(wrapper: &[&str], args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let tracer = env!("CARGO_BIN_EXE_shuffletrace");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(tracer);
                command
            }
            None => Command::new(tracer),
        };
        let mut child = command
            .args(["--format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
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
                let missing: Vec<&str> = value["missing"]
                    .as_array()
                    .expect("missing is a list")
                    .iter()
                    .filter_map(|m| m["tracepoint"].as_str())
                    .collect();
                assert_eq!(
                    missing,
                    expected_missing(),
                    "the programs missing on this kernel (all attach unless \
                     SHUFFLETRACE_EXPECT_MISSING names some): {value}"
                );
                break;
            }
        }
        tracer
    }

    /// SIGINT, wait for a clean exit, and return every line, each validated against the schema.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for shuffletrace");
        assert!(status.success(), "shuffletrace exited with {status}");
        self.seen.extend(self.lines.iter());
        let schema: Value =
            serde_json::from_str(include_str!("../../schema/shuffletrace.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let values: Vec<Value> = self
            .seen
            .iter()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if let Err(error) = validator.validate(&value) {
                    panic!(
                        "line does not match the schema at {} ({}): {error}\n{line}",
                        error.instance_path, error.schema_path
                    );
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

pub fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "event" && v["event"] == event)
        .collect()
}

pub fn mentions(value: &Value, endpoint: &SocketAddr) -> bool {
    let text = endpoint.to_string();
    value["src"] == text.as_str() || value["dst"] == text.as_str()
}

pub fn dump(lines: &[Value]) -> String {
    lines.iter().map(|v| format!("{v}\n")).collect()
}

pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

/// Closes with a RST instead of a FIN when the stream is dropped (SO_LINGER 0).
pub fn abort_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// The last `stats` line of a run (written at shutdown, after everything was drained).
pub fn last_stats(lines: &[Value]) -> &Value {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "stats")
        .unwrap_or_else(|| panic!("no stats line: {}", dump(lines)))
}

/// Clean flows the kernel summarised on server port `port`, on one side (`client` or
/// `server`) or both (None), from a `stats` line.
pub fn clean_flows(stats: &Value, port: u16, side: Option<&str>) -> u64 {
    stats["clean_flows_by_port"]
        .as_array()
        .unwrap_or_else(|| panic!("no clean_flows_by_port in {stats}"))
        .iter()
        .filter(|r| r["port"] == port && side.is_none_or(|side| r["side"] == side))
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

/// Lets the last kernel events of the connections (FIN handshakes finish asynchronously)
/// happen before the tracer is stopped; stopping drains everything already recorded.
pub fn settle() {
    thread::sleep(Duration::from_millis(300));
}

/// Runs a command inside a namespace (`ip netns exec`), failing the test if it fails.
pub fn exec_in(ns: &Netns, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .status()
        .expect("ip netns exec");
    assert!(
        status.success(),
        "in {}: {} failed",
        ns.name,
        args.join(" ")
    );
}

/// client -- router -- server, each its own namespace, IPv4, with forwarding in the router:
/// packets from the server reach the client one hop down (TTL 63), which is what tells a
/// router-made RST (TTL 64) from the server's own.
pub struct Routed {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
}

impl Routed {
    /// A tracer of `ports` that watches this topology's namespaces only (`--netns`): tests
    /// that run at the same time on the same port see nothing of each other.
    pub fn tracer(&self, ports: &str) -> Tracer {
        let files: Vec<String> = [&self.client, &self.router, &self.server]
            .iter()
            .map(|ns| format!("/run/netns/{}", ns.name))
            .collect();
        let mut args = vec!["--ports", ports];
        for file in &files {
            args.extend(["--netns", file.as_str()]);
        }
        Tracer::start_with(&args)
    }

    pub fn new() -> Self {
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let client = Netns::new(format!("st-c{tag}"));
        let router = Netns::new(format!("st-r{tag}"));
        let server = Netns::new(format!("st-s{tag}"));
        let subnet = 10 + (n % 100) * 2;
        let (left, right) = (subnet, subnet + 1);
        let links = [
            (
                &client,
                &router,
                format!("stc{tag}"),
                format!("stl{tag}"),
                left,
            ),
            (
                &server,
                &router,
                format!("sts{tag}"),
                format!("str{tag}"),
                right,
            ),
        ];
        for (host, router_ns, host_dev, router_dev, net) in &links {
            ip(&[
                "link", "add", host_dev, "type", "veth", "peer", "name", router_dev,
            ]);
            ip(&["link", "set", host_dev, "netns", &host.name]);
            ip(&["link", "set", router_dev, "netns", &router_ns.name]);
            ip(&[
                "-n",
                &host.name,
                "addr",
                "add",
                &format!("10.214.{net}.2/24"),
                "dev",
                host_dev,
            ]);
            ip(&[
                "-n",
                &router_ns.name,
                "addr",
                "add",
                &format!("10.214.{net}.1/24"),
                "dev",
                router_dev,
            ]);
            ip(&["-n", &host.name, "link", "set", host_dev, "up"]);
            ip(&["-n", &router_ns.name, "link", "set", router_dev, "up"]);
            ip(&[
                "-n",
                &host.name,
                "route",
                "add",
                "default",
                "via",
                &format!("10.214.{net}.1"),
            ]);
        }
        exec_in(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        Self {
            client_ip: format!("10.214.{left}.2").parse().unwrap(),
            server_ip: format!("10.214.{right}.2").parse().unwrap(),
            client,
            router,
            server,
        }
    }
}

pub fn findings<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "finding" && v["kind"] == kind)
        .collect()
}

/// Findings of `kind` whose `field` (`src` or `dst`) is `addr`.
pub fn findings_at<'a>(
    lines: &'a [Value],
    kind: &str,
    field: &str,
    addr: SocketAddr,
) -> Vec<&'a Value> {
    let addr = addr.to_string();
    findings(lines, kind)
        .into_iter()
        .filter(|f| f[field] == addr.as_str())
        .collect()
}

/// What finding lines count together: their `count`s summed (a folded line carries its
/// repeats).
pub fn total_count(found: &[&Value]) -> u64 {
    found.iter().map(|f| f["count"].as_u64().unwrap()).sum()
}

/// `count` connects from the client namespace to `port` of the server, each refused.
pub fn refused_burst(topo: &Topology, port: u16, count: usize) {
    let target = SocketAddr::new(topo.server_v4, port);
    let refused = topo
        .client
        .run("st-burst", move || {
            (0..count).filter(|_| connect(target).is_err()).count()
        })
        .join()
        .unwrap();
    assert_eq!(refused, count);
}

/// What a NAT router does with a packet of a flow it forgot.
pub enum Forgotten {
    /// Answer with a RST (like an AWS NAT gateway).
    Reset,
    /// Drop it silently (like Azure).
    Drop,
}

/// MASQUERADE of the client's subnet on the router (a NAT gateway).
pub fn masquerade(net: &Routed) {
    let client_net = format!("{}/24", net.client_ip);
    exec_in(
        &net.router,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &client_net,
            "-j",
            "MASQUERADE",
        ],
    );
}

/// A router that MASQUERADEs the client, forgets an idle flow after `idle_s` (conntrack's
/// established timeout, `nf_conntrack_tcp_loose=0`) as a cloud NAT gateway does, and then
/// answers or drops its packets as `forgotten` says.
pub fn nat_router(forgotten: Forgotten, idle_s: u64) -> Routed {
    let net = Routed::new();
    masquerade(&net);
    exec_in(
        &net.router,
        &[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_established={idle_s}"),
            "net.netfilter.nf_conntrack_tcp_loose=0",
        ],
    );
    let action: &[&str] = match forgotten {
        Forgotten::Reset => &["REJECT", "--reject-with", "tcp-reset"],
        Forgotten::Drop => &["DROP"],
    };
    let mut rule = vec![
        "iptables",
        "-A",
        "FORWARD",
        "-p",
        "tcp",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
    ];
    rule.extend_from_slice(action);
    exec_in(&net.router, &rule);
    net
}

/// From the client namespace (thread `st-odbc`): a request and its answer, then silence past
/// the NAT's `idle_s`, then a write, which a NAT that dropped the flow drops (the kernel
/// retransmits it, with gaps that grow past 80% of the threshold within a few seconds); the
/// client's end.
pub fn write_after_idle(net: &Routed, target: SocketAddr, idle_s: u64) -> SocketAddr {
    use std::io::{Read as _, Write as _};
    net.client
        .run("st-odbc", move || {
            let mut stream = connect(target).expect("connect");
            let mut buf = [0u8; 2];
            stream.write_all(b"select 1").unwrap();
            stream.read_exact(&mut buf).unwrap();
            thread::sleep(Duration::from_secs(idle_s + 2));
            stream.write_all(b"fetch").unwrap();
            thread::sleep(Duration::from_secs(2 * idle_s));
            stream.local_addr().unwrap()
        })
        .join()
        .unwrap()
}
