//! Command line: `shuffletrace [run] [--ports LIST] [--format text|json] [--duration D] ...`.

use crate::{
    config::{Format, NatIdle, ReportFormat, Thresholds, parse_duration},
    error::UsageError,
    services::DEFAULT_PORTS,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "shuffletrace",
    version,
    about = "Trace the TCP packet path of Spark services and say why connections fail",
    long_about = "Traces TCP connections on the watched ports (Spark shuffle 7337, HiveServer2 \
                  10000, Spark Connect 10001, ...) with eBPF programs on the kernel's TCP \
                  tracepoints, in every network namespace of this host. Needs root (or \
                  CAP_BPF and CAP_PERFMON). Without a subcommand it runs `shuffletrace run`.",
    after_long_help = crate::kernel::programs::kernel_help(),
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
    Run(Box<RunArgs>),
    /// Connect to each port of HOST while tracing, and say for each: open, refused, timeout
    /// or unreachable, with the finding and its remedy. Exit 0 when all are open, else 1.
    Probe(ProbeArgs),
    /// Summarise trace files (or saved --format json output) for an incident ticket: header,
    /// findings by kind and destination, timeline, evidence, remedies, lost events. Reads
    /// rotated files in order, and .gz files. Needs no privileges.
    Report(ReportArgs),
    /// Join one connection's two ends from several nodes' traces (trace files, saved --format
    /// json output, or `kubectl logs --prefix` of the DaemonSet's pods; `-` reads standard
    /// input) by TCP initial sequence number, through NAT: where a SYN or its answer died, a
    /// RST neither end sent, a NAT in the path. Needs no privileges.
    Correlate(CorrelateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CorrelateArgs {
    /// Trace files, directories of them, saved output or logs; `-` for standard input.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    pub inputs: Vec<std::path::PathBuf>,

    /// `markdown` (a ticket-ready report of the joined findings), `html` (the same as one
    /// self-contained page) or `json` (NDJSON finding lines, as the tracer writes them, with
    /// `nodes` and `ends`).
    #[arg(long, value_enum, default_value_t = ReportFormatArg::Markdown)]
    pub format: ReportFormatArg,

    /// How far apart two nodes' clocks may be (up to 10m).
    #[arg(long, value_name = "D", default_value = "5s")]
    pub max_skew: String,

    /// Skip lines that are not shuffletrace JSON, and read a cut .gz up to the cut, instead of
    /// stopping.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Trace files or directories (their shuffletrace-*.ndjson[.gz] files, oldest first).
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    pub inputs: Vec<std::path::PathBuf>,

    /// `markdown` (renders in GitHub and Jira), `json` (one document) or `html` (one
    /// self-contained page with a ladder diagram per finding group).
    #[arg(long, value_enum, default_value_t = ReportFormatArg::Markdown)]
    pub format: ReportFormatArg,

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

/// `report --format` (see `config::ReportFormat`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormatArg {
    Markdown,
    Json,
    Html,
}

impl From<ReportFormatArg> for ReportFormat {
    fn from(arg: ReportFormatArg) -> Self {
        match arg {
            ReportFormatArg::Markdown => Self::Markdown,
            ReportFormatArg::Json => Self::Json,
            ReportFormatArg::Html => Self::Html,
        }
    }
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
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Ports to watch, comma separated, ranges allowed (`7337,10000-10001`). A flow is watched
    /// when its local or its remote port is in the list.
    #[arg(long, value_name = "LIST", default_value = DEFAULT_PORTS)]
    pub ports: String,

    /// Output format: `text` (a readable line per event) or `json` (NDJSON, one object a line).
    #[arg(long, value_enum, default_value_t = FormatArg::Text)]
    pub format: FormatArg,

    /// Stop after this long (`30s`, `5m`, `1h`): detach, drain, flush and exit 0. Without it,
    /// run until SIGINT or SIGTERM, which do the same.
    #[arg(long, value_name = "D")]
    pub duration: Option<String>,

    /// Upper bound on flows tracked at once, in the kernel's socket-owner table and in the
    /// collector's flow table. Past it the oldest flows are evicted, and evictions are counted.
    /// 1 to 4194304; the kernel tables take about 352 bytes per flow (46 MiB at the default).
    #[arg(long, value_name = "N", default_value_t = 131_072,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_FLOWS)))]
    pub max_flows: u32,

    /// Where the host's /proc and /var/log/pods are, for Kubernetes pod attribution: `/`
    /// on the host, `/host` in a container that mounts the host there.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: std::path::PathBuf,

    /// The `node` every line names: default `NODE_NAME` (the DaemonSet sets it from the
    /// downward API), else the host name. Lets two tracers on one machine stand for two nodes.
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    pub node_name: Option<String>,

    /// Also print every clean flow (one `flow_summary` event line when it closes, with its
    /// ISNs): what `correlate` needs to find NAT in traffic that works. Off: clean flows are
    /// only counted.
    #[arg(long)]
    pub clean_flows: bool,

    /// Watch only this network namespace (repeatable, up to 64): an inode number, a namespace
    /// file (`/proc/PID/ns/net`, `/run/netns/NAME`), or a pod (`POD` or `NAMESPACE/POD`,
    /// found through --host-root). Default: every namespace of the host.
    #[arg(long, value_name = "NETNS")]
    pub netns: Vec<String>,

    #[command(flatten)]
    pub findings: FindingArgs,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// A node name as Kubernetes allows it (RFC 1123 subdomain: at most 253 characters of
/// lower-case letters, digits, `-` and `.`), so that it can be joined with pod metadata.
fn parse_node_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(name.to_owned())
    } else {
        Err("a node name is 1-253 characters of a-z, 0-9, '-' and '.'".to_owned())
    }
}

/// Most flows `--max-flows` accepts: the kernel tables then take about 1.4 GiB.
pub const MAX_FLOWS: u32 = 1 << 22;

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

    /// Trace files kept (at least 1); older ones are deleted (the directory never exceeds
    /// about keep x max-size).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub trace_keep: u64,

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
    pub fn thresholds(&self) -> Result<Thresholds, UsageError> {
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
        Ok(Thresholds {
            storm_retransmits: self.storm_retransmits,
            storm_window_ns: nanos("--storm-window", &self.storm_window)?,
            synack_retransmits: self.synack_retransmits,
            aggregate_window_ns: nanos("--aggregate-window", &self.aggregate_window)?,
            nat_idle: NatIdle::parse(&self.nat_idle)?,
        })
    }
}

/// `--format` of `run` and `probe` (see `config::Format`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    Text,
    Json,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Self {
        match arg {
            FormatArg::Text => Self::Text,
            FormatArg::Json => Self::Json,
        }
    }
}
