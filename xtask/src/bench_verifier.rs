//! Start-up on other kernels, as a relative figure: the verifier's work per program
//! (instructions processed) on this kernel, next to what the last kernel matrix run
//! (`cargo xtask vm-test`, logs in target/vm/logs) recorded for 6.1 and 6.12. Under TCG a
//! guest's wall-clock start-up says nothing about a real node; the verifier's work does, as
//! it is the part of start-up that differs between kernels. The start-up on those kernels is
//! estimated from it: this kernel's start-up plus its verification time scaled by the other
//! kernel's instructions.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result};

/// Kernels of the matrix compared with this one (their serial logs, when present).
const MATRIX: [&str; 2] = ["6.1", "6.12"];

/// Workers the tracer verifies its programs on (see `verify_all` in the loader).
const VERIFY_THREADS: f64 = 2.0;

/// (program, instructions processed) from lines like
/// `... inet_sock_set_state verified in 12.3ms (18695 instructions processed)`.
pub fn parse(text: &str) -> BTreeMap<String, u64> {
    counts(&parse_timed(text))
}

/// The instruction counts of `parse_timed`'s result, without the times.
fn counts(timed: &BTreeMap<String, (u64, f64)>) -> BTreeMap<String, u64> {
    timed
        .iter()
        .map(|(name, (count, _))| (name.clone(), *count))
        .collect()
}

/// (program, (instructions processed, seconds the load took)), from the same lines.
fn parse_timed(text: &str) -> BTreeMap<String, (u64, f64)> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" verified in ")?;
            let name = before.split_whitespace().last()?;
            let (took, rest) = after.split_once(" (")?;
            let count = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.to_owned(), (count, seconds(took).unwrap_or(0.0))))
        })
        .collect()
}

/// A Rust `Duration` as `Debug` prints it (`12.3ms`, `857.4µs`, `1.2s`), in seconds.
fn seconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" | "us" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The verifier's work on this kernel: one short run of the binary with debug logs.
fn host(binary: &Path) -> Result<BTreeMap<String, (u64, f64)>> {
    let output = Command::new(binary)
        .args(["--duration", "1s", "--format", "json", "--ports", "7337"])
        .env("RUST_LOG", "shuffletrace=debug")
        .output()
        .context("running shuffletrace for its verifier figures")?;
    Ok(parse_timed(&String::from_utf8_lossy(&output.stderr)))
}

/// The verifier's work here and on the matrix kernels: lines for the bench's output, and per
/// matrix kernel how much longer (seconds; negative: shorter) its start-up is estimated to
/// be than this kernel's.
pub struct Verification {
    pub lines: Vec<String>,
    pub startup_delta_s: Vec<(String, f64)>,
}

/// Per program instructions processed here and on each matrix kernel with a log, each
/// kernel's total relative to this one's, and the start-up estimate that follows: this
/// kernel's verification time (spread over the tracer's verifying threads) times the other
/// kernel's instructions over this one's. It assumes the verifier processes an instruction
/// as fast there as here.
pub fn report(root: &Path) -> Result<Verification> {
    let timed = host(&root.join("target/release/shuffletrace"))?;
    let verify_s: f64 = timed.values().map(|(_, took)| took).sum::<f64>() / VERIFY_THREADS;
    let here = counts(&timed);
    let mut startup_delta_s = Vec::new();
    let mut kernels = vec![("this kernel".to_owned(), here.clone())];
    for kernel in MATRIX {
        let log = root.join(format!("target/vm/logs/{kernel}.log"));
        if let Ok(text) = std::fs::read_to_string(&log) {
            let counts = parse(&text);
            if !counts.is_empty() {
                kernels.push((kernel.to_owned(), counts));
            }
        }
    }
    let mut lines = vec![format!(
        "verifier work (instructions processed) per program: {}",
        kernels
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" / ")
    )];
    for program in here.keys() {
        lines.push(format!(
            "  {program:<24} {}",
            kernels
                .iter()
                .map(|(_, counts)| counts.get(program).map_or("-".to_owned(), u64::to_string))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    let total_here: u64 = here.values().sum();
    for (kernel, counts) in &kernels[1..] {
        // Programs this kernel loads that the host does not (kfree_skb on 6.1) are left out
        // of the ratio and named.
        let common: u64 = here.keys().filter_map(|p| counts.get(p)).sum();
        let extra: Vec<&String> = counts.keys().filter(|p| !here.contains_key(*p)).collect();
        let all: u64 = counts.values().sum();
        let delta = verify_s * (all as f64 / total_here.max(1) as f64 - 1.0);
        startup_delta_s.push((kernel.clone(), delta));
        lines.push(format!(
            "  {kernel}: {common} instructions for the programs this kernel loads, {:.2}x this kernel's {total_here}{} (target/vm/logs/{kernel}.log, from the last `cargo xtask vm-test`)",
            common as f64 / total_here.max(1) as f64,
            if extra.is_empty() {
                String::new()
            } else {
                format!(
                    "; plus {} ({} instructions)",
                    extra
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    extra.iter().filter_map(|p| counts.get(*p)).sum::<u64>()
                )
            }
        ));
    }
    lines.push(format!(
        "  verification here: {:.0} ms of loads over {VERIFY_THREADS} threads ({:.0} ms of start-up); on the others scaled by their instructions",
        verify_s * VERIFY_THREADS * 1e3,
        verify_s * 1e3
    ));
    if kernels.len() == 1 {
        lines.push(
            "  no kernel matrix logs in target/vm/logs: run `cargo xtask vm-test 6.1 6.12` for them"
                .to_owned(),
        );
    }
    Ok(Verification {
        lines,
        startup_delta_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_guest_lines() {
        let text = "2026-11-30T18:00:00Z DEBUG shuffletrace::kernel::loader: inet_sock_set_state verified in 40.1ms (18695 instructions processed)\n\
                    VMTEST-VERIFIER kfree_skb verified in 68.8ms (1869 instructions processed)\n\
                    something else\n";
        let counts = parse(text);
        assert_eq!(counts.get("inet_sock_set_state"), Some(&18695));
        assert_eq!(counts.get("kfree_skb"), Some(&1869));
        assert_eq!(counts.len(), 2);
        let timed = parse_timed(text);
        assert!((timed["inet_sock_set_state"].1 - 0.0401).abs() < 1e-9);
        let micros =
            parse_timed("x tcp_retransmit_synack verified in 857.4µs (958 instructions processed)");
        assert!((micros["tcp_retransmit_synack"].1 - 857.4e-6).abs() < 1e-12);
    }
}
