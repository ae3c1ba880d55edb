//! `cargo xtask bench-correlate [MIB]`: `shuffletrace correlate` on two nodes' traces of
//! MIB in all (1024 by default): every connection from node a to node b through a NAT, each
//! end a `--clean-flows` summary with its ISNs, a connection per millisecond, and every
//! hundredth a connect timeout to a node nobody traced. Prints the peak RSS and the time,
//! and checks the answer: one `nat_in_path` counting every joined connection, and each
//! timeout passed through. Needs no root; the traces are generated in target/bench.

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use crate::bench_report::workload;

/// What the generated traces hold.
struct Written {
    connections: u64,
    timeouts: u64,
    bytes: u64,
}

fn ts(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(1_790_000_000) + Duration::from_millis(ms);
    humantime::format_rfc3339_nanos(at).to_string()
}

fn write_traces(dir: &Path, total: u64) -> Result<Written> {
    let mut a = BufWriter::new(std::fs::File::create(dir.join("node-a.ndjson"))?);
    let mut b = BufWriter::new(std::fs::File::create(dir.join("node-b.ndjson"))?);
    for (out, node, address) in [
        (&mut a, "node-a", "10.1.0.5"),
        (&mut b, "node-b", "10.2.0.9"),
    ] {
        writeln!(
            out,
            r#"{{"type":"start","v":1,"ts":"{}","node":"{node}","version":"0.1.0","kernel":"6.1.0","ports":[7337],"attached":[],"missing":[],"unavailable":[],"nat_idle_s":350.0,"nat_idle_profile":"aws","addresses":["{address}"]}}"#,
            ts(0)
        )?;
    }
    let mut written = Written {
        connections: 0,
        timeouts: 0,
        bytes: 0,
    };
    let mut n: u64 = 0;
    while written.bytes < total {
        n += 1;
        let (at, client_port, isn, server_isn) = (
            ts(n),
            20_000 + n % 40_000,
            (n.wrapping_mul(2_654_435_761)) as u32,
            (n.wrapping_mul(40_503)) as u32,
        );
        if n.is_multiple_of(100) {
            let line = format!(
                r#"{{"type":"finding","v":1,"id":{n},"kind":"connect_timeout","severity":"error","ts":"{at}","node":"node-a","src":"10.1.0.5:{client_port}","dst":"10.3.0.7:7337","service":"Spark external shuffle service","netns":4026531840,"pid":4242,"comm":"java","uid":1000,"side":"client","summary":"SYNs unanswered","evidence":[{{"ts":"{at}","event":"retransmit","src":"10.1.0.5:{client_port}","dst":"10.3.0.7:7337","state":"SYN_SENT","isn_sent":{isn}}}],"remedy":"open the port","count":1,"first_ts":"{at}","last_ts":"{at}","isn_sent":{isn}}}"#
            );
            writeln!(a, "{line}")?;
            written.bytes += line.len() as u64 + 1;
            written.timeouts += 1;
            continue;
        }
        let client = format!(
            r#"{{"type":"event","v":1,"event":"flow_summary","ts":"{at}","node":"node-a","src":"10.1.0.5:{client_port}","dst":"10.2.0.9:7337","netns":4026531840,"pid":4242,"tid":4250,"comm":"java","thread":"shuffle-client-","uid":1000,"cgroup_id":1,"cookie":{n},"side":"client","state":"CLOSE","isn_sent":{isn},"isn_received":{server_isn}}}"#
        );
        let server = format!(
            r#"{{"type":"event","v":1,"event":"flow_summary","ts":"{at}","node":"node-b","src":"10.2.0.9:7337","dst":"10.2.0.1:{}","netns":4026531840,"pid":777,"tid":780,"comm":"java","thread":"shuffle-server-","uid":1000,"cgroup_id":1,"cookie":{n},"side":"server","state":"CLOSE","isn_sent":{server_isn},"isn_received":{isn}}}"#,
            30_000 + n % 30_000
        );
        writeln!(a, "{client}")?;
        writeln!(b, "{server}")?;
        written.bytes += (client.len() + server.len() + 2) as u64;
        written.connections += 1;
    }
    a.flush()?;
    b.flush()?;
    Ok(written)
}

pub fn run(root: &Path, binary: &Path, size_mib: u64) -> Result<()> {
    let dir = root.join("target/bench/correlate");
    std::fs::create_dir_all(&dir)?;
    let written = write_traces(&dir, size_mib << 20)?;
    println!(
        "traces: {} ({:.0} MiB: {} connections seen from both nodes, {} timeouts from one)",
        dir.display(),
        written.bytes as f64 / (1 << 20) as f64,
        written.connections,
        written.timeouts
    );
    let started = Instant::now();
    let out = dir.join("out.ndjson");
    let mut child = Command::new(binary)
        .args(["correlate", "--format", "json"])
        .arg(dir.join("node-a.ndjson"))
        .arg(dir.join("node-b.ndjson"))
        .stdout(Stdio::from(std::fs::File::create(&out)?))
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    let waited = workload::wait_measured(&mut child, Duration::from_secs(1800))
        .context("correlate did not finish in 30 min")?;
    if waited.code != Some(0) {
        bail!("correlate failed ({:?})", waited.code);
    }
    let (mib, secs) = (
        waited.peak_rss_kib as f64 / 1024.0,
        started.elapsed().as_secs_f64(),
    );
    let text = std::fs::read_to_string(&out)?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let nat: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["kind"] == "nat_in_path")
        .collect();
    let timeouts = lines
        .iter()
        .filter(|l| l["kind"] == "connect_timeout")
        .count() as u64;
    let joined = nat.first().and_then(|l| l["count"].as_u64()).unwrap_or(0);
    println!(
        "correlate: peak RSS {mib:.1} MiB, {secs:.1} s ({:.0} MiB/s); {} nat_in_path counting {joined} \
         connections, {timeouts} connect_timeout passed through",
        written.bytes as f64 / (1 << 20) as f64 / secs,
        nat.len()
    );
    if nat.len() != 1 || joined != written.connections || timeouts != written.timeouts {
        bail!(
            "wrong answer: expected one nat_in_path of {} and {} timeouts",
            written.connections,
            written.timeouts
        );
    }
    std::fs::write(
        root.join("target/bench/correlate.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "input_mib": written.bytes >> 20,
            "connections": written.connections,
            "peak_rss_mib": mib,
            "seconds": secs,
        }))? + "\n",
    )?;
    Ok(())
}
