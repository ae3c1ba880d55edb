//! Command line: `shuffletrace [run] [--ports LIST] [--format text|json] [--duration D] ...`.

use std::{fmt, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The seed's port table: HTTPS UI/API, alternative REST API, HiveServer2/Thrift, Spark
/// Connect, the executor shuffle service, the driver UI and the Hive metastore.
pub const DEFAULT_PORTS: &str = "7337,10000,10001,4040,9083,443,8443";

#[derive(Parser, Debug)]
#[command(
    name = "shuffletrace",
    version,
    about = "Trace the TCP packet path of Spark services and say why connections fail",
    long_about = "Traces TCP connections on the watched ports (Spark shuffle 7337, HiveServer2 \
                  10000, Spark Connect 10001, ...) with eBPF programs on the kernel's TCP \
                  tracepoints, in every network namespace of this host. Needs root (or \
                  CAP_BPF and CAP_PERFMON). Without a subcommand it runs `shuffletrace run`.",
    after_long_help = crate::programs::kernel_help(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace live: print kernel events and findings on the watched ports (the default).
    Run(RunArgs),
    /// Connect to each port of HOST while tracing, and say for each: open, refused, timeout
    /// or unreachable, with the finding and its remedy. Exit 0 when all are open, else 1.
    Probe(ProbeArgs),
    /// Summarise trace files (or saved --format json output) for an incident ticket: header,
    /// findings by kind and destination, timeline, evidence, remedies, lost events. Reads
    /// rotated files in order, and .gz files. Needs no privileges.
    Report(ReportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Trace files or directories (their shuffletrace-*.ndjson[.gz] files, oldest first).
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    pub inputs: Vec<std::path::PathBuf>,

    /// `markdown` (renders in GitHub and Jira) or `json` (one document).
    #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
    pub format: ReportFormat,

    /// Only lines at or after this time: RFC 3339, or a duration ago (`2h`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,

    /// Only lines at or before this time: RFC 3339, or a duration ago.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,

    /// Only findings on this port (either end).
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,

    /// Only findings of this kind (connect_refused, tls_mismatch, ...).
    #[arg(long, value_name = "K")]
    pub kind: Option<String>,

    /// Skip unreadable lines (cut, not JSON, another schema version) and say how many,
    /// instead of stopping at the first with exit status 2.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Markdown,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Host name or IP address to probe.
    pub host: String,

    /// Ports to try (same syntax as `run --ports`).
    #[arg(long, value_name = "LIST", default_value = DEFAULT_PORTS)]
    pub ports: String,

    /// How long each connection attempt may take before it counts as a timeout.
    #[arg(long, value_name = "D", default_value = "5s")]
    pub timeout: String,

    /// `text` (a table) or `json` (one NDJSON line per port).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Ports to watch, comma separated, ranges allowed (`7337,10000-10001`). A flow is watched
    /// when its local or its remote port is in the list.
    #[arg(long, value_name = "LIST", default_value = DEFAULT_PORTS)]
    pub ports: String,

    /// Output format: `text` (a readable line per event) or `json` (NDJSON, one object a line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stop after this long (`30s`, `5m`, `1h`): detach, drain, flush and exit 0. Without it,
    /// run until SIGINT or SIGTERM, which do the same.
    #[arg(long, value_name = "D")]
    pub duration: Option<String>,

    /// Upper bound on flows tracked at once, in the kernel's socket-owner table and in the
    /// collector's flow table. Past it the oldest flows are evicted, and evictions are counted.
    #[arg(long, value_name = "N", default_value_t = 131_072)]
    pub max_flows: u32,

    /// Where the host's /proc and /var/log/pods are, for Kubernetes pod attribution: `/`
    /// on the host, `/host` in a container that mounts the host there.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: std::path::PathBuf,

    #[command(flatten)]
    pub findings: FindingArgs,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// Where the stream goes besides stdout, for incidents and for a DaemonSet that runs for
/// months.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Also write every line (JSON, whatever --format says) to NDJSON trace files in DIR,
    /// rotated by size; names sort by time.
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<std::path::PathBuf>,

    /// Size at which a trace file is closed and the next one started (`64MiB`, `10MB`).
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    pub trace_max_size: String,

    /// Trace files kept; older ones are deleted (the directory never exceeds about
    /// keep x max-size).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub trace_keep: usize,

    /// Serve Prometheus metrics on http://ADDR/metrics and liveness on /healthz (off by
    /// default), e.g. `0.0.0.0:9464`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// How often a `stats` line (events, findings, losses, table sizes) is written.
    #[arg(long, value_name = "D", default_value = "60s")]
    pub stats_interval: String,
}

/// How events become findings.
#[derive(Args, Debug, Clone)]
pub struct FindingArgs {
    /// Print only findings (verdicts with evidence and remedy), not every kernel event.
    #[arg(long)]
    pub findings_only: bool,

    /// retransmit_storm: an established flow that retransmits at least this many segments ...
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub storm_retransmits: u32,

    /// ... within this window.
    #[arg(long, value_name = "D", default_value = "10s")]
    pub storm_window: String,

    /// return_path_blocked: SYN-ACK retransmits of one handshake without the final ACK.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub synack_retransmits: u32,

    /// Identical findings (same kind, service, client and process) within this window are
    /// printed once, then as one line with their exact count when the window closes.
    /// Repeated refusals and RSTs without a socket within it are counted in the kernel instead
    /// of sent (the counts stay exact). `1ns` turns folding off.
    #[arg(long, value_name = "D", default_value = "10s")]
    pub aggregate_window: String,

    /// NAT idle timeout that watched established flows are checked against: `aws` (350 s),
    /// `azure` (4 min), `gcp` (1200 s), or a duration like `4s`. A flow idle for 80% of it
    /// without keepalive protection is `idle_at_risk`; one that breaks after it is
    /// `nat_idle_timeout` (client) or `half_open` (server).
    #[arg(long, value_name = "PROFILE_OR_DURATION", default_value = "aws")]
    pub nat_idle: String,
}

impl FindingArgs {
    pub fn config(&self) -> Result<crate::findings::Config, UsageError> {
        let nanos = |flag: &str, text: &str| -> Result<u64, UsageError> {
            parse_duration(text)
                .map(|d| d.as_nanos() as u64)
                .map_err(|e| UsageError(e.0.replace("--duration", flag)))
        };
        if self.storm_retransmits == 0 {
            return Err(UsageError(
                "invalid --storm-retransmits 0: must be at least 1".into(),
            ));
        }
        if self.synack_retransmits == 0 {
            return Err(UsageError(
                "invalid --synack-retransmits 0: must be at least 1".into(),
            ));
        }
        Ok(crate::findings::Config {
            storm_retransmits: self.storm_retransmits,
            storm_window_ns: nanos("--storm-window", &self.storm_window)?,
            synack_retransmits: self.synack_retransmits,
            aggregate_window_ns: nanos("--aggregate-window", &self.aggregate_window)?,
            nat_idle: crate::idle::NatIdle::parse(&self.nat_idle)?,
            hz: 0,
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A command-line value that does not parse; printed as one line, exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses a watched-port list: comma-separated ports and `low-high` ranges, 1..=65535.
/// Returns the sorted, de-duplicated ports.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, UsageError> {
    let bad = |token: &str, why: &str| {
        UsageError(format!(
            "invalid --ports list {list:?}: {token:?} {why} (expected ports 1-65535 or ranges \
             like 10000-10001, comma separated)"
        ))
    };
    if list.trim().is_empty() {
        return Err(bad("", "is empty"));
    }
    let port = |token: &str| -> Result<u16, UsageError> {
        match token.trim().parse::<u32>() {
            Ok(0) => Err(bad(token, "is not a port: port 0 cannot be watched")),
            Ok(n) if n > 65535 => Err(bad(token, "is out of range")),
            Ok(n) => Ok(n as u16),
            Err(_) => Err(bad(token, "is not a port number")),
        }
    };
    let mut ports = Vec::new();
    for token in list.split(',') {
        if token.trim().is_empty() {
            return Err(bad(token, "is an empty entry"));
        }
        match token.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (port(low)?, port(high)?);
                if low > high {
                    return Err(bad(token, "is a range whose start is above its end"));
                }
                ports.extend(low..=high);
            }
            None => ports.push(port(token)?),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Parses `--duration`: `30s`, `5m`, `1h`, `1h30m`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, UsageError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(UsageError(format!(
            "invalid --duration {text:?}: must be longer than zero"
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(UsageError(format!(
            "invalid --duration {text:?}: {e} (examples: 30s, 5m, 1h)"
        ))),
    }
}

/// Compact rendering of a sorted port list, ranges folded: `443,4040,7337,10000-10001`.
pub fn format_ports(ports: &[u16]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let start = ports[i];
        let mut end = start;
        while i + 1 < ports.len() && ports[i + 1] == end + 1 {
            i += 1;
            end = ports[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_are_the_seed_table() {
        assert_eq!(
            parse_ports(DEFAULT_PORTS).unwrap(),
            vec![443, 4040, 7337, 8443, 9083, 10000, 10001]
        );
    }

    #[test]
    fn ranges_expand_and_duplicates_fold() {
        assert_eq!(
            parse_ports("7337, 10000-10002,7337").unwrap(),
            vec![7337, 10000, 10001, 10002]
        );
        assert_eq!(
            format_ports(&[443, 7337, 10000, 10001, 10002]),
            "443,7337,10000-10002"
        );
    }

    #[test]
    fn bad_tokens_are_named() {
        for (list, token) in [
            ("0", "\"0\""),
            ("70000", "\"70000\""),
            ("7337,abc", "\"abc\""),
            ("7337,,10000", "\"\""),
            ("10001-10000", "\"10001-10000\""),
            ("", "\"\""),
            ("7337-", "\"\""),
        ] {
            let err = parse_ports(list).unwrap_err().0;
            assert!(err.contains(token), "{list}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
