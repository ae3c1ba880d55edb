//! `cargo xtask bench-report`: the peak RSS of `shuffletrace report` on a large trace, for
//! the budget of issue 17 (memory follows the finding groups, not the input: at most 64 MiB
//! for a 64 MiB trace). A memory figure, so one run per format is enough, unlike the noisy
//! throughput figures of `cargo xtask bench`. Needs no root. The trace (generated, the same
//! bytes every time) is written to target/bench; the figures go to stdout and
//! target/bench/report.json.

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

#[path = "../../tests/report/workload.rs"]
pub(crate) mod workload;

/// The budget: peak RSS of `report` on a 64 MiB trace.
const BUDGET_MIB: f64 = 64.0;

pub fn run(root: &Path, binary: &Path, size_mib: u64) -> Result<()> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let trace = dir.join(format!("report-{size_mib}MiB.ndjson"));
    let mut out = BufWriter::new(std::fs::File::create(&trace)?);
    let written = workload::write(&mut out, size_mib << 20)?;
    out.flush()?;
    drop(out);
    println!(
        "trace: {} ({:.1} MiB: {} events, {} findings, {} stats lines)",
        trace.display(),
        written.bytes as f64 / (1 << 20) as f64,
        written.events,
        written.findings,
        written.stats
    );
    let mut figures = Vec::new();
    for format in ["markdown", "json"] {
        let started = Instant::now();
        let mut child = Command::new(binary)
            .args(["report", "--format", format])
            .arg(&trace)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let waited = workload::wait_measured(&mut child, Duration::from_secs(600))
            .context("report did not finish in 600 s")?;
        if waited.code != Some(0) {
            bail!("report --format {format} failed ({:?})", waited.code);
        }
        let (mib, secs) = (
            waited.peak_rss_kib as f64 / 1024.0,
            started.elapsed().as_secs_f64(),
        );
        println!("report --format {format}: peak RSS {mib:.1} MiB, {secs:.2} s");
        figures.push(serde_json::json!({"format": format, "peak_rss_mib": mib, "seconds": secs}));
    }
    let own = workload::own_peak_rss_kib() as f64 / 1024.0;
    println!("(this process's own peak RSS, which Linux counts in a child's: {own:.1} MiB)");
    let peak = figures
        .iter()
        .filter_map(|f| f["peak_rss_mib"].as_f64())
        .fold(0.0, f64::max);
    let met = if peak <= BUDGET_MIB { "met" } else { "missed" };
    println!(
        "\nbudget (issue 17):\n  [{met}] report peak RSS <= {BUDGET_MIB} MiB on a {size_mib} MiB trace \
         (measured {peak:.1})"
    );
    let json = serde_json::json!({
        "trace_mib": size_mib,
        "lines": {"events": written.events, "findings": written.findings, "stats": written.stats},
        "runs": figures,
        "own_peak_rss_mib": own,
        "budget_mib": BUDGET_MIB,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!("\nfigures in target/bench/report.json");
    Ok(())
}
