//! `shuffletrace probe HOST`: what SREs do with telnet, port by port (a hang is a drop,
//! "refused" is a RST), done for them while tracing, so every failed port comes with the
//! kernel's evidence, a finding and its remedy.

use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    cli::ProbeArgs,
    config::{self, Format, Thresholds},
    error::UsageError,
    findings::{Finding, FindingKind},
    services::service_name,
    session::{Session, Settings},
    sinks::SCHEMA_VERSION,
};

/// What the connection attempt itself saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Open,
    Refused,
    Timeout,
    Unreachable(&'static str),
    Failed(String),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Failed(_) => "error",
        }
    }

    fn from_error(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => Self::Refused,
            Some(libc::ETIMEDOUT) => Self::Timeout,
            Some(libc::EHOSTUNREACH) => Self::Unreachable("EHOSTUNREACH"),
            Some(libc::ENETUNREACH) => Self::Unreachable("ENETUNREACH"),
            _ => Self::Failed(error.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PortResult {
    pub target: SocketAddr,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// The finding the tracer made of this attempt (the most telling one), if any.
    pub finding: Option<Finding>,
}

async fn attempt(target: SocketAddr, timeout: Duration) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await
    {
        Ok(Ok(_stream)) => Outcome::Open,
        Ok(Err(error)) => Outcome::from_error(&error),
        Err(_) => Outcome::Timeout,
    };
    (outcome, started.elapsed())
}

/// The most telling finding about our own attempt to `target`.
fn finding_for(findings: &[Finding], target: SocketAddr) -> Option<Finding> {
    let me = std::process::id();
    let rank = |kind: FindingKind| match kind {
        FindingKind::MiddleboxReset => 0,
        FindingKind::HostUnreachable => 1,
        FindingKind::ConnectRefused => 2,
        FindingKind::ConnectTimeout => 3,
        _ => 4,
    };
    findings
        .iter()
        .filter(|f| f.dst == target && f.owner.as_ref().is_none_or(|o| o.pid == me))
        // An update says how it ended; the original says how it started: prefer the update.
        .min_by_key(|f| (rank(f.kind), f.update_of.is_none()))
        .cloned()
}

fn resolve(host: &str) -> Result<IpAddr, UsageError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    use std::net::ToSocketAddrs as _;
    (host, 0)
        .to_socket_addrs()
        .map_err(|e| UsageError(format!("cannot resolve host {host:?}: {e}")))?
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| UsageError(format!("host {host:?} has no address")))
}

/// Runs the probe; Ok(true) when every port is open.
pub fn run(args: ProbeArgs) -> Result<bool> {
    let ports = config::parse_ports(&args.ports)?;
    let timeout = config::parse_duration(&args.timeout)
        .map_err(|e| UsageError(e.0.replace("--duration", "--timeout")))?;
    let ip = resolve(&args.host)?;
    let btf = crate::session::prepare()?;
    let settings = Settings {
        ports: &ports,
        max_flows: 4096,
        findings: Thresholds {
            storm_retransmits: 5,
            storm_window_ns: 10_000_000_000,
            synack_retransmits: 2,
            // Every port is its own finding: nothing to fold.
            aggregate_window_ns: 1,
            nat_idle: crate::config::NatIdle::parse("aws")?,
        },
        format: Format::Json,
        findings_only: true,
        trace: None,
        metrics: None,
        stats_interval: Duration::from_secs(3600),
        host_root: None,
        node_name: None,
        netns: Default::default(),
        netns_files: Vec::new(),
        clean_flows: false,
    };
    let results = crate::session::runtime()?.block_on(async {
        let mut session = Session::start(btf, settings, io::sink())?;
        session.pipeline.capture();
        // All ports at once: the attempts run as tasks while the session drains the kernel.
        let mut attempts = tokio::task::JoinSet::new();
        for &port in &ports {
            let target = SocketAddr::new(ip, port);
            attempts.spawn(async move { (target, attempt(target, timeout).await) });
        }
        let mut outcomes = session
            .pump_until(attempts.join_all())
            .await?
            .unwrap_or_default();
        outcomes.sort_by_key(|(target, _)| ports.iter().position(|&p| p == target.port()));
        // Let the kernel's last events of the closed attempts arrive.
        session
            .pump_until(tokio::time::sleep(Duration::from_millis(200)))
            .await?;
        let (mut pipeline, _, _) = session.finish()?;
        let findings = pipeline.take_captured();
        Ok::<_, anyhow::Error>(
            outcomes
                .into_iter()
                .map(|(target, (outcome, elapsed))| PortResult {
                    finding: if outcome == Outcome::Open {
                        None
                    } else {
                        finding_for(&findings, target)
                    },
                    target,
                    outcome,
                    elapsed,
                })
                .collect::<Vec<_>>(),
        )
    })?;
    let mut out = io::stdout().lock();
    match Format::from(args.format) {
        Format::Json => write_json(&mut out, &args.host, &results)?,
        Format::Text => write_table(&mut out, &args.host, &results)?,
    }
    out.flush()?;
    Ok(results.iter().all(|r| r.outcome == Outcome::Open))
}

#[derive(Serialize)]
struct ProbeLine<'a> {
    #[serde(rename = "type")]
    line_type: &'static str,
    v: u32,
    host: &'a str,
    dst: String,
    port: u16,
    service: Option<&'static str>,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ms: f64,
    finding: Option<&'static str>,
    summary: Option<&'a str>,
    remedy: Option<&'a str>,
}

fn error_text(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Unreachable(errno) => Some((*errno).to_owned()),
        Outcome::Failed(text) => Some(text.clone()),
        _ => None,
    }
}

fn write_json(out: &mut impl Write, host: &str, results: &[PortResult]) -> io::Result<()> {
    for r in results {
        let line = ProbeLine {
            line_type: "probe",
            v: SCHEMA_VERSION,
            host,
            dst: r.target.to_string(),
            port: r.target.port(),
            service: service_name(r.target.port()),
            result: r.outcome.name(),
            error: error_text(&r.outcome),
            ms: (r.elapsed.as_secs_f64() * 1e4).round() / 10.0,
            finding: r.finding.as_ref().map(|f| f.kind.name()),
            summary: r.finding.as_ref().map(|f| f.summary.as_str()),
            remedy: r.finding.as_ref().map(|f| f.remedy.as_str()),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn write_table(out: &mut impl Write, host: &str, results: &[PortResult]) -> io::Result<()> {
    writeln!(out, "shuffletrace probe {host}")?;
    writeln!(
        out,
        "{:<6} {:<32} {:<26} {:>10}  FINDING",
        "PORT", "SERVICE", "RESULT", "TIME"
    )?;
    for r in results {
        let result = match error_text(&r.outcome) {
            Some(error) if matches!(r.outcome, Outcome::Unreachable(_)) => {
                format!("{} ({error})", r.outcome.name())
            }
            _ => r.outcome.name().to_owned(),
        };
        let finding = match (&r.finding, &r.outcome) {
            (Some(f), _) => format!("{}: {}", f.kind.name(), f.summary),
            (None, Outcome::Failed(text)) => text.clone(),
            (None, _) => String::new(),
        };
        writeln!(
            out,
            "{:<6} {:<32} {:<26} {:>8.1}ms  {finding}",
            r.target.port(),
            service_name(r.target.port()).unwrap_or("-"),
            result,
            r.elapsed.as_secs_f64() * 1000.0,
        )?;
        if let Some(f) = &r.finding {
            writeln!(out, "{:<6} fix: {}", "", f.remedy)?;
        }
    }
    let open = results
        .iter()
        .filter(|r| r.outcome == Outcome::Open)
        .count();
    writeln!(out, "{open} of {} ports open", results.len())
}
