//! Whether this process may load eBPF programs, checked before anything else so that a missing
//! privilege is one clear line, not a verifier error.

use anyhow::{Context as _, Result};

use crate::error::FatalError;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities this process lacks to load and attach tracing programs, by name.
pub fn missing_capabilities(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect()
}

/// The effective capability set from `/proc/self/status`.
fn effective_capabilities() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .context("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(hex.trim(), 16).context("parsing CapEff")
}

/// Fails with a clear message when this process cannot load eBPF programs.
pub fn check_privileges() -> Result<()> {
    let missing = missing_capabilities(effective_capabilities()?);
    if missing.is_empty() {
        return Ok(());
    }
    Err(FatalError(format!(
        "shuffletrace needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF \
         programs (missing: {}); run it with sudo: sudo shuffletrace ...",
        missing.join(", ")
    ))
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_named() {
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
    }
}
