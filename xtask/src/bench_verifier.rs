//! Start-up on other kernels, as a relative figure: the verifier's work per program
//! (instructions processed) on this kernel, next to what the last kernel matrix run
//! (`cargo xtask vm-test`, logs in target/vm/logs) recorded for 6.1 and 6.12. Under TCG a
//! guest's wall-clock start-up says nothing about a real node; the verifier's work does, as
//! it is most of start-up.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, Result};

/// Kernels of the matrix compared with this one (their serial logs, when present).
const MATRIX: [&str; 2] = ["6.1", "6.12"];

/// (program, instructions processed) from lines like
/// `... inet_sock_set_state verified in 12.3ms (18695 instructions processed)`.
pub fn parse(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" verified in ")?;
            let name = before.split_whitespace().last()?;
            let count = after
                .split_once('(')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), count))
        })
        .collect()
}

/// The verifier's work on this kernel: one short run of the binary with debug logs.
fn host(binary: &Path) -> Result<BTreeMap<String, u64>> {
    let output = Command::new(binary)
        .args(["--duration", "1s", "--format", "json", "--ports", "7337"])
        .env("RUST_LOG", "shuffletrace=debug")
        .output()
        .context("running shuffletrace for its verifier figures")?;
    Ok(parse(&String::from_utf8_lossy(&output.stderr)))
}

/// Lines for the bench's output: per program instructions processed here and on each
/// matrix kernel with a log, and each kernel's total relative to this one's.
pub fn report(root: &Path) -> Result<Vec<String>> {
    let here = host(&root.join("target/release/shuffletrace"))?;
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
    if kernels.len() == 1 {
        lines.push(
            "  no kernel matrix logs in target/vm/logs: run `cargo xtask vm-test 6.1 6.12` for them"
                .to_owned(),
        );
    }
    Ok(lines)
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
    }
}
