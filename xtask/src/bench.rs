//! `cargo xtask bench`: shuffletrace's overhead, measured the way eBPF tools are judged:
//! against a peer (bpftrace on the same tracepoints, printing the same fields), in one run,
//! with interleaved rounds (A B A B ...) and medians, because these machines are noisy.
//! Writes a table to stdout and the figures to target/bench/latest.json.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const WATCHED: u16 = 7337;
/// Watched too (Spark Connect): the refused-connect load, on a port the churn never used.
const WATCHED_REFUSED: u16 = 10001;
const UNWATCHED: u16 = 17337;
const PORTS: &str = "7337,10001";
const ROUNDS: usize = 5;
/// Long enough (~3 s and ~1.5 s) that scheduler noise averages out within a run.
const CHURN: u64 = 100_000;
const REFUSED: u64 = 200_000;
/// Connections held for the memory figure: 100,000 watched flows (both ends are local).
const HELD: u64 = 50_000;

/// The peer: bpftrace printing the same fields for the same tracepoints, watched port only.
const BPFTRACE_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && (args->sport == 7337 || args->dport == 7337 || args->sport == 10001 || args->dport == 10001)/ {
  printf("state %d %d %s:%d %s:%d %d %d %s\n", args->oldstate, args->newstate,
    ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, pid, uid, comm);
}
tracepoint:tcp:tcp_retransmit_skb /args->sport == 7337 || args->dport == 7337 || args->sport == 10001 || args->dport == 10001/ {
  printf("retransmit %d %s:%d %s:%d\n", args->state, ntop(args->saddr), args->sport, ntop(args->daddr), args->dport);
}
tracepoint:tcp:tcp_receive_reset /args->sport == 7337 || args->dport == 7337 || args->sport == 10001 || args->dport == 10001/ {
  printf("reset_received %s:%d %s:%d %llu\n", ntop(args->saddr), args->sport, ntop(args->daddr), args->dport, args->sock_cookie);
}
tracepoint:tcp:tcp_send_reset {
  printf("reset_sent %d %d\n", args->state, args->reason);
}
"#;

/// The floor: the same four tracepoints, each hit only counted in a per-CPU kernel map,
/// nothing filtered, read or shipped. What any tracer of these tracepoints costs at least;
/// shuffletrace's ratio is judged against it. (Debian's bpftrace 0.17 has no raw
/// tracepoints, so these are perf tracepoints, a little dearer than shuffletrace's
/// `tp_btf`: the floor is, if anything, a little low.)
const FLOOR_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
tracepoint:sock:inet_sock_set_state { @runs = count(); }
tracepoint:tcp:tcp_retransmit_skb { @runs = count(); }
tracepoint:tcp:tcp_receive_reset { @runs = count(); }
tracepoint:tcp:tcp_send_reset { @runs = count(); }
"#;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The command that runs stload in a fresh network namespace: no TIME_WAIT sockets or
/// conntrack entries left by earlier runs, so every run starts from the same state.
fn stload_command(args: &[String]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(root().join("target/release/stload"))
        .args(args);
    command
}

/// shuffletrace as the bench runs it: JSON lines, the bench's ports, and `extra`.
fn shuffletrace_command(extra: &[&str]) -> Command {
    let mut command = Command::new(root().join("target/release/shuffletrace"));
    command
        .args(["--format", "json", "--ports", PORTS])
        .args(extra);
    command
}

/// A load run's figures: its `rate`, and the connections it made (`connections`).
#[derive(Clone, Copy)]
struct Load {
    rate: f64,
    connections: u64,
}

/// Runs stload and returns its figures.
fn stload(args: &[String]) -> Result<Load> {
    let rate = stload_once(args);
    // Let the kernel tear the namespace down before the next run is measured.
    std::thread::sleep(Duration::from_millis(1500));
    rate
}

fn stload_once(args: &[String]) -> Result<Load> {
    let mut child = stload_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running stload")?;
    // Bounded: a stuck load run fails the bench instead of hanging it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("stload {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "stload {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|r| r.parse::<f64>().ok())
    };
    Ok(Load {
        rate: field("rate=").context("stload printed no rate")?,
        connections: field("connections=").unwrap_or(0.0) as u64,
    })
}

/// A tracer running in the background, with its output in a file.
pub struct Tracer {
    child: Child,
    output: PathBuf,
    started: Duration,
}

fn clock_ticks(pid: u32) -> u64 {
    // utime + stime, fields 14 and 15 of /proc/<pid>/stat (after the comm in parentheses).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl Tracer {
    /// Starts `command` and waits until the line that says it is attached.
    fn start(mut command: Command, ready: &str, name: &str) -> Result<Self> {
        let output = root().join(format!("target/bench/{name}.out"));
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().unwrap();
        // Wait for the attached line on a thread, so a tracer that never says it is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.contains(&ready) => {
                        let _ = tx.send(reader);
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        let Ok(mut reader) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            bail!("{name} did not attach within 60 s");
        };
        let attached = started.elapsed();
        // Keep draining its output into a file, as a log collector would.
        let mut file = std::fs::File::create(&output)?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut file);
        });
        Ok(Self {
            child,
            output,
            started: attached,
        })
    }

    pub fn shuffletrace(extra: &[&str]) -> Result<Self> {
        Self::start(
            shuffletrace_command(extra),
            "\"type\":\"start\"",
            "shuffletrace",
        )
    }

    /// shuffletrace attached with its programs returning at once (`tracepoints`: without the
    /// cgroup_skb ones): what the hooks alone cost, the floor of this design.
    fn hooks(mode: &str) -> Result<Self> {
        let mut command = shuffletrace_command(&[]);
        command.env("SHUFFLETRACE_BENCH_HOOKS_ONLY", mode);
        Self::start(command, "\"type\":\"start\"", "hooks")
    }

    fn bpftrace() -> Result<Self> {
        let mut command = Command::new("bpftrace");
        // Line-buffered: its BEGIN line, printed once every probe is attached, must reach us
        // through the pipe.
        command.args(["-B", "line", "-e", BPFTRACE_SCRIPT]);
        Self::start(command, "attached", "bpftrace")
    }

    fn floor() -> Result<Self> {
        let mut command = Command::new("bpftrace");
        command.args(["-B", "line", "-e", FLOOR_SCRIPT]);
        Self::start(command, "attached", "floor")
    }

    /// Stops it (SIGINT), returning its output and the CPU seconds it used.
    fn stop(self) -> Result<(String, f64)> {
        self.stop_with_peak().map(|(output, cpu, _)| (output, cpu))
    }

    /// Stops it, also returning its peak RSS over the whole run, start-up included
    /// (VmHWM, KiB).
    pub fn stop_with_peak(mut self) -> Result<(String, f64, u64)> {
        let ticks = clock_ticks(self.child.id());
        let peak = status_kib(self.child.id(), "VmHWM:");
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        // Bounded: a tracer that ignores SIGINT is killed after 20 s.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut text = String::new();
        std::fs::File::open(&self.output)?.read_to_string(&mut text)?;
        // SAFETY: sysconf without side effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((text, ticks as f64 / hz, peak))
    }
}

/// A number from shuffletrace's last stats line (0 when missing).
pub fn stats_number(output: &str, key: &str) -> u64 {
    output
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"stats\""))
        .and_then(|l| {
            l.split(&format!("\"{key}\":"))
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// events decoded, events lost and clean flows summarised, from shuffletrace's last stats
/// line.
fn shuffletrace_delivery(output: &str) -> (u64, u64, u64) {
    (
        stats_number(output, "events"),
        stats_number(output, "lost_events"),
        stats_number(output, "clean_flows"),
    )
}

/// Sum of `count` over shuffletrace's finding lines of one kind, and the occurrences of it
/// the kernel counted instead of sending (`repeats counted` is in the stats line, over all
/// kinds).
fn finding_count(output: &str, kind: &str) -> u64 {
    let tag = format!("\"kind\":\"{kind}\"");
    output
        .lines()
        .filter(|l| l.contains("\"type\":\"finding\"") && l.contains(&tag))
        .filter_map(|l| {
            l.rsplit_once("\"count\":")?
                .1
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// events printed and lost, from bpftrace's output.
fn bpftrace_delivery(output: &str) -> (u64, u64) {
    let printed = output
        .lines()
        .filter(|l| !l.starts_with("Lost") && !l.is_empty())
        .count() as u64;
    let lost = output
        .lines()
        .filter_map(|l| l.strip_prefix("Lost "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    (printed, lost)
}

/// Sockets of watched flows that the collector saw as anomalous (shipped) rather than
/// summarised, per side (client, server): distinct cookies of their event lines, listeners
/// and socketless events (cookie 0: a RST sent for no socket) left out.
fn anomalous_sockets(output: &str) -> (u64, u64) {
    let mut sides = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    for line in output
        .lines()
        .filter(|l| l.contains("\"type\":\"event\"") && !l.contains("LISTEN"))
    {
        let cookie = line
            .split_once("\"cookie\":")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if cookie == 0 {
            continue;
        }
        if line.contains("\"side\":\"client\"") {
            sides.0.insert(cookie);
        } else if line.contains("\"side\":\"server\"") {
            sides.1.insert(cookie);
        }
    }
    (sides.0.len() as u64, sides.1.len() as u64)
}

/// Clean-flow summaries of one side, from the last stats line's `clean_flows_by_port`.
fn clean_by_side(output: &str, side: &str) -> u64 {
    let Some(stats) = output
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":\"stats\""))
    else {
        return 0;
    };
    let tag = format!("\"side\":\"{side}\",\"count\":");
    stats
        .match_indices(&tag)
        .filter_map(|(at, _)| {
            stats[at + tag.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[derive(Default)]
struct Row {
    name: String,
    untraced: f64,
    shuffletrace: f64,
    bpftrace: Option<f64>,
    /// The floor (see `FLOOR_SCRIPT`).
    floor: Option<f64>,
    /// shuffletrace's hooks alone: all nine programs returning at once (see `Tracer::hooks`).
    hooks: f64,
    /// The same, the tracepoints only (no cgroup_skb program attached).
    tracepoint_hooks: f64,
    /// Events lost in any shuffletrace round.
    lost: u64,
    /// Whether every round accounted for every connection (see `Accounting`).
    accounted: bool,
    /// The largest peak RSS (VmHWM) of shuffletrace over the rounds, KiB.
    peak_kib: u64,
}

/// How a workload's connections must all show up in shuffletrace's output.
#[derive(Clone, Copy)]
enum Accounting {
    /// Both ends local on a watched port: clean-flow summaries + anomalous sockets = two
    /// per connection made (the load's own wake-up connections included).
    Watched,
    /// An unwatched port: nothing at all.
    Unwatched,
    /// Every operation is one finding of this kind, counted exactly.
    Findings(&'static str),
}

/// Interleaved rounds of one workload: untraced, shuffletrace, its hooks alone (all, then
/// the tracepoints only), bpftrace and the floor (if available).
fn compare(
    name: &str,
    load: &[String],
    with_peer: bool,
    accounting: Accounting,
    delivery: &mut Vec<String>,
) -> Result<Row> {
    let (mut plain, mut traced, mut peer, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut hooks, mut tracepoint_hooks) = (Vec::new(), Vec::new());
    let ops: u64 = load.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    let (mut all_lost, mut accounted, mut peak_kib) = (0, true, 0);
    for round in 0..ROUNDS {
        plain.push(stload(load)?.rate);
        eprintln!(
            "xtask bench: {name} round {round}: untraced {:.0}",
            plain[round]
        );
        let tracer = Tracer::shuffletrace(&[])?;
        let run = stload(load)?;
        traced.push(run.rate);
        let (output, cpu, peak) = tracer.stop_with_peak()?;
        peak_kib = peak_kib.max(peak);
        let (events, lost, clean) = shuffletrace_delivery(&output);
        all_lost += lost;
        let (clients, servers) = anomalous_sockets(&output);
        let anomalous = clients + servers;
        // Each side on its own: a connection's client and server socket must each be a
        // summary or an anomalous flow.
        let sides = (
            clean_by_side(&output, "client") + clients,
            clean_by_side(&output, "server") + servers,
        );
        // Quiet flows whose close the kernel skipped (recursion) are not printed: the stats
        // line counts every `close_unseen`, the printed ones are anomalous flows counted above.
        let unseen_quiet = stats_number(&output, "closes_unseen").saturating_sub(
            output
                .lines()
                .filter(|l| l.contains("\"event\":\"close_unseen\""))
                .count() as u64,
        );
        let (seen, wanted) = match accounting {
            Accounting::Watched => (sides.0 + sides.1 + unseen_quiet, 2 * run.connections),
            Accounting::Unwatched => (clean + anomalous, 0),
            Accounting::Findings(kind) => (finding_count(&output, kind), ops),
        };
        accounted &= match accounting {
            // Each side at most once per connection, and all of them with the quiet flows
            // whose close was unseen (their side is not printed).
            Accounting::Watched => {
                sides.0 <= run.connections && sides.1 <= run.connections && seen == wanted
            }
            _ => seen == wanted,
        };
        eprintln!(
            "xtask bench: {name} round {round}: shuffletrace {:.0}, accounted {seen} of {wanted} (clients, servers: {sides:?}), lost {lost}, peak RSS {peak} KiB",
            traced[round]
        );
        if round == 0 {
            delivery.push(format!(
                "{name}: {ops} operations; shuffletrace decoded {events} records ({clean} of them clean-flow summaries{}), lost {lost}; collector CPU {cpu:.2} s{}",
                match accounting {
                    Accounting::Findings(kind) => format!(
                        "; {kind} findings count {seen}; {} repeated refusals and RSTs counted in the kernel instead of sent",
                        stats_number(&output, "repeats_counted")
                    ),
                    Accounting::Watched => format!(
                        "; {anomalous} anomalous sockets; accounted for: {} of {} clients, {} of {} servers, and {unseen_quiet} quiet sockets whose close the kernel skipped",
                        sides.0, run.connections, sides.1, run.connections
                    ),
                    Accounting::Unwatched => String::new(),
                },
                if events >= 10_000 {
                    format!(" ({:.2} s per million records)", cpu * 1e6 / events as f64)
                } else {
                    String::new()
                },
            ));
        }
        for (mode, rates) in [("1", &mut hooks), ("tracepoints", &mut tracepoint_hooks)] {
            let tracer = Tracer::hooks(mode)?;
            rates.push(stload(load)?.rate);
            tracer.stop()?;
            eprintln!(
                "xtask bench: {name} round {round}: hooks only ({mode}) {:.0}",
                rates[round]
            );
        }
        if with_peer {
            let tracer = Tracer::bpftrace()?;
            peer.push(stload(load)?.rate);
            eprintln!(
                "xtask bench: {name} round {round}: bpftrace {:.0}",
                peer[round]
            );
            let (output, cpu) = tracer.stop()?;
            if round == 0 {
                let (printed, lost) = bpftrace_delivery(&output);
                delivery.push(format!(
                    "{name}: bpftrace printed {printed} events, lost {lost}, CPU {cpu:.2} s"
                ));
            }
            let tracer = Tracer::floor()?;
            floor.push(stload(load)?.rate);
            eprintln!(
                "xtask bench: {name} round {round}: floor {:.0}",
                floor[round]
            );
            tracer.stop()?;
        }
    }
    Ok(Row {
        name: name.to_owned(),
        untraced: median(&mut plain),
        shuffletrace: median(&mut traced),
        bpftrace: with_peer.then(|| median(&mut peer)),
        floor: with_peer.then(|| median(&mut floor)),
        hooks: median(&mut hooks),
        tracepoint_hooks: median(&mut tracepoint_hooks),
        lost: all_lost,
        accounted,
        peak_kib,
    })
}

pub fn run() -> Result<()> {
    std::fs::create_dir_all(root().join("target/bench"))?;
    let peer = which_bpftrace();
    if !peer {
        eprintln!("xtask bench: bpftrace not available; comparing with untraced only");
    }
    let mut delivery = Vec::new();
    let churn = |port: u16, count: u64| {
        vec![
            "churn".to_owned(),
            port.to_string(),
            count.to_string(),
            "2".to_owned(),
        ]
    };
    let refused = vec![
        "refused".to_owned(),
        WATCHED_REFUSED.to_string(),
        REFUSED.to_string(),
        "2".to_owned(),
    ];
    let rows = vec![
        compare(
            "churn, watched port (conn/s)",
            &churn(WATCHED, CHURN),
            peer,
            Accounting::Watched,
            &mut delivery,
        )?,
        compare(
            "churn, unwatched port (conn/s)",
            &churn(UNWATCHED, CHURN),
            peer,
            Accounting::Unwatched,
            &mut delivery,
        )?,
        compare(
            "refused connects, watched (conn/s)",
            &refused,
            peer,
            Accounting::Findings("connect_refused"),
            &mut delivery,
        )?,
        compare(
            "bulk, watched port (MB/s)",
            &["bulk".into(), WATCHED.to_string(), "3".into()],
            false,
            Accounting::Watched,
            &mut delivery,
        )?,
        compare(
            "bulk, unwatched port (MB/s)",
            &["bulk".into(), UNWATCHED.to_string(), "3".into()],
            false,
            Accounting::Unwatched,
            &mut delivery,
        )?,
    ];

    // Start-up: launch to attached.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let tracer = Tracer::shuffletrace(&[])?;
        ours.push(tracer.started.as_secs_f64());
        tracer.stop()?;
        eprintln!("xtask bench: start-up: shuffletrace {:?}", ours.last());
        if peer {
            let tracer = Tracer::bpftrace()?;
            theirs.push(tracer.started.as_secs_f64());
            tracer.stop()?;
        }
    }
    let startup = (median(&mut ours), peer.then(|| median(&mut theirs)));

    // Memory: 100,000 concurrent watched flows (both ends of 50,000 connections), then after
    // they close; once with flows that carry data (watched for idleness through the kernel's
    // activity table), once with flows that never do.
    let mut memory = Vec::new();
    for mode in ["data", "quiet"] {
        let tracer = Tracer::shuffletrace(&["--max-flows", "262144", "--findings-only"])?;
        let pid = tracer.child.id();
        // RSS while the flows are held, sampled every 100 ms; the peak reported is VmHWM
        // over the whole run, start-up included (a DaemonSet's memory limit must cover it).
        let mut hold = stload_command(&[
            "hold".into(),
            WATCHED.to_string(),
            HELD.to_string(),
            "4".into(),
            mode.into(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
        let mut held_kib = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            held_kib = held_kib.max(status_kib(pid, "VmRSS:"));
            if let Some(status) = hold.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = hold.kill();
                bail!("stload hold did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            bail!("stload hold failed");
        }
        std::thread::sleep(Duration::from_secs(8));
        let steady_kib = status_kib(pid, "VmRSS:");
        let (output, _, peak_kib) = tracer.stop_with_peak()?;
        let (events, lost, _) = shuffletrace_delivery(&output);
        eprintln!("xtask bench: memory ({mode}): peak {peak_kib} KiB, {held_kib} KiB while held");
        memory.push((mode, peak_kib, steady_kib, events, lost));
    }
    let lost = memory.iter().map(|m| m.4).sum::<u64>();
    let flows_peak_kib = memory.iter().map(|m| m.1).max().unwrap_or(0);
    let runs_peak_kib = rows.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    let verification = crate::bench_verifier::report(&root())?;

    println!(
        "\n{:<36} {:>9} {:>12} {:>6} {:>9} {:>6} {:>6} {:>9} {:>6} {:>9} {:>6} {:>9} {:>9}",
        "workload",
        "untraced",
        "shuffletrace",
        "ratio",
        "hooks",
        "ratio",
        "tp",
        "floor",
        "ratio",
        "bpftrace",
        "ratio",
        "vs floor",
        "vs hooks"
    );
    for row in &rows {
        let cells = |value: Option<f64>| match value {
            Some(v) => format!("{v:>9.0} {:>6.2}", v / row.untraced),
            None => format!("{:>9} {:>6}", "-", "-"),
        };
        println!(
            "{:<36} {:>9.0} {:>12.0} {:>6.2} {} {:>6.2} {} {} {:>9} {:>9.2}",
            row.name,
            row.untraced,
            row.shuffletrace,
            row.shuffletrace / row.untraced,
            cells(Some(row.hooks)),
            row.tracepoint_hooks / row.untraced,
            cells(row.floor),
            cells(row.bpftrace),
            row.floor
                .map_or("-".to_owned(), |f| format!("{:.2}", row.shuffletrace / f)),
            row.shuffletrace / row.hooks
        );
    }
    println!(
        "\nstart-up to attached: shuffletrace {:.3} s{}",
        startup.0,
        startup
            .1
            .map(|s| format!(", bpftrace {s:.3} s"))
            .unwrap_or_default()
    );
    println!(
        "peak RSS (VmHWM, start-up included) over the load runs: {:.1} MiB",
        runs_peak_kib as f64 / 1024.0
    );
    for (mode, peak, steady, events, lost) in &memory {
        println!(
            "memory with {} concurrent watched flows ({}): peak RSS (VmHWM) {:.1} MiB, {:.1} MiB after they closed ({events} records, {lost} lost)",
            HELD * 2,
            if *mode == "data" {
                "each carried data"
            } else {
                "no data"
            },
            *peak as f64 / 1024.0,
            *steady as f64 / 1024.0
        );
    }
    for line in &delivery {
        println!("{line}");
    }
    for line in &verification.lines {
        println!("{line}");
    }
    let ratio = |i: usize| rows[i].shuffletrace / rows[i].untraced;
    // The floor's own ratio in the same rounds, for context: what any tracer of the same
    // tracepoints cost at least in this run.
    let floor = |i: usize| {
        let bpftrace = rows[i].floor.map_or_else(String::new, |f| {
            format!("; the floor {:.3}", f / rows[i].untraced)
        });
        format!(
            "; the hooks alone {:.3}{bpftrace}",
            rows[i].hooks / rows[i].untraced
        )
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    // Start-up on the matrix kernels: this kernel's, plus what their verifiers add.
    let estimated_startup: Vec<(&str, f64)> = verification
        .startup_delta_s
        .iter()
        .map(|(kernel, delta)| (kernel.as_str(), startup.0 + delta))
        .collect();
    println!("\nbudget (issue 19):");
    for (goal, met) in [
        (
            format!(
                "watched-port churn ratio >= 0.95 (measured {:.3}{})",
                ratio(0),
                floor(0)
            ),
            ratio(0) >= 0.95,
        ),
        (
            format!(
                "refused-connect storm ratio >= 0.85 (measured {:.3}{})",
                ratio(2),
                floor(2)
            ),
            ratio(2) >= 0.85,
        ),
        (
            format!(
                "unwatched-port churn ratio >= 0.98 (measured {:.3}{})",
                ratio(1),
                floor(1)
            ),
            ratio(1) >= 0.98,
        ),
        (
            format!(
                "bulk throughput ratio >= 0.98, watched and unwatched (measured {:.3} / {:.3}; the hooks alone {:.3} / {:.3})",
                ratio(3),
                ratio(4),
                rows[3].hooks / rows[3].untraced,
                rows[4].hooks / rows[4].untraced
            ),
            ratio(3) >= 0.98 && ratio(4) >= 0.98,
        ),
        (
            format!(
                "peak RSS (VmHWM, start-up included) <= 32 MiB (measured {:.1})",
                mib(runs_peak_kib)
            ),
            runs_peak_kib <= 32 * 1024,
        ),
        (
            format!(
                "peak RSS <= 32 MiB with {} flows (measured {:.1})",
                HELD * 2,
                mib(flows_peak_kib)
            ),
            flows_peak_kib <= 32 * 1024,
        ),
        (
            format!(
                "start-up <= 150 ms on this kernel (measured {:.0} ms)",
                startup.0 * 1e3
            ),
            startup.0 <= 0.150,
        ),
        (
            format!(
                "start-up <= 150 ms on 6.1 and 6.12 (estimated from the verifier's work: {})",
                if estimated_startup.is_empty() {
                    "no kernel matrix logs".to_owned()
                } else {
                    estimated_startup
                        .iter()
                        .map(|(kernel, s)| format!("{kernel} {:.0} ms", s * 1e3))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            !estimated_startup.is_empty() && estimated_startup.iter().all(|(_, s)| *s <= 0.150),
        ),
        (
            "shuffletrace lost no event (every round of every workload)".to_owned(),
            lost == 0 && rows.iter().all(|r| r.lost == 0),
        ),
        (
            "every connection accounted for: clean summaries + anomalous sockets + quiet sockets whose close the kernel skipped = 2 per connection made, every refused connect in a connect_refused count, nothing on unwatched ports (every round)"
                .to_owned(),
            rows.iter().all(|r| r.accounted),
        ),
    ] {
        println!("  [{}] {goal}", if met { "met" } else { "MISSED" });
    }

    let json = format!(
        "{{\n  \"rows\": [{}],\n  \"startup_s\": {{\"shuffletrace\": {:.4}, \"bpftrace\": {}}},\n  \"memory_100k_flows_mib\": {{\"data\": {{\"peak\": {:.1}, \"after_close\": {:.1}}}, \"quiet\": {{\"peak\": {:.1}, \"after_close\": {:.1}}}}},\n  \"delivery\": [{}]\n}}\n",
        rows.iter()
            .map(|r| format!(
                "\n    {{\"workload\": \"{}\", \"untraced\": {:.1}, \"shuffletrace\": {:.1}, \"ratio\": {:.3}, \"hooks\": {:.1}, \"hooks_ratio\": {:.3}, \"tracepoint_hooks_ratio\": {:.3}, \"floor\": {}, \"floor_ratio\": {}, \"bpftrace\": {}, \"bpftrace_ratio\": {}, \"accounted\": {}, \"lost\": {}, \"peak_rss_mib\": {:.1}}}",
                r.name,
                r.untraced,
                r.shuffletrace,
                r.shuffletrace / r.untraced,
                r.hooks,
                r.hooks / r.untraced,
                r.tracepoint_hooks / r.untraced,
                r.floor.map_or("null".into(), |p| format!("{p:.1}")),
                r.floor.map_or("null".into(), |p| format!("{:.3}", p / r.untraced)),
                r.bpftrace.map_or("null".into(), |p| format!("{p:.1}")),
                r.bpftrace.map_or("null".into(), |p| format!("{:.3}", p / r.untraced)),
                r.accounted,
                r.lost,
                r.peak_kib as f64 / 1024.0
            ))
            .collect::<Vec<_>>()
            .join(","),
        startup.0,
        startup.1.map_or("null".into(), |s| format!("{s:.4}")),
        memory[0].1 as f64 / 1024.0,
        memory[0].2 as f64 / 1024.0,
        memory[1].1 as f64 / 1024.0,
        memory[1].2 as f64 / 1024.0,
        delivery.iter().map(|d| format!("\n    {:?}", d)).collect::<Vec<_>>().join(",")
    );
    std::fs::write(root().join("target/bench/latest.json"), json)?;
    println!("\nfigures in target/bench/latest.json");
    Ok(())
}

fn which_bpftrace() -> bool {
    // bpftrace's tracepoints are found in tracefs, which a fresh VM may not have mounted.
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    let works = || {
        Command::new("bpftrace")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return true;
    }
    let _ = Command::new("apt-get").arg("update").status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "bpftrace"])
        .status();
    works()
}
