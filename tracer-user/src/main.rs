//! shuffletrace: eBPF packet-path tracer for the network failures that break Spark.
//!
//! Data path: probes (kernel programs, `probes`) -> events (`events`) -> flows (`flows`) ->
//! findings (`findings`, `remedies`) -> sinks (`sinks`); `pipeline` strings the userspace half
//! together and `session` runs it against the kernel.

mod cli;
mod config;
mod correlate;
mod error;
mod events;
mod findings;
mod flows;
mod kernel;
mod pipeline;
mod probe;
mod report;
mod services;
mod session;
mod sinks;

use std::{io::BufWriter, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::{Cli, Command, RunArgs},
    error::{FatalError, UsageError},
    session::{Session, Settings},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: logs collected from a pipe or a pod stay
        // plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Some(Command::Run(args)) => run(*args),
        Some(Command::Probe(args)) => probe::run(args).map(|all_open| {
            if all_open {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Some(Command::Report(args)) => report::run(&args).map(|()| ExitCode::SUCCESS),
        Some(Command::Correlate(args)) => correlate::run(&args).map(|()| ExitCode::SUCCESS),
        None => run(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let (message, code) = error::exit_status(&error);
            eprintln!("shuffletrace: {message}");
            code
        }
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let ports = config::parse_ports(&args.ports)?;
    let duration = args
        .duration
        .as_deref()
        .map(config::parse_duration)
        .transpose()?;
    let findings = args.findings.thresholds()?;
    let export = &args.export;
    let max_size = sinks::trace::parse_size(&export.trace_max_size).ok_or_else(|| {
        UsageError(format!(
            "invalid --trace-max-size {:?}: use a size like 64MiB or 10MB",
            export.trace_max_size
        ))
    })?;
    let stats_interval = config::parse_duration(&export.stats_interval)
        .map_err(|e| UsageError(e.0.replace("--duration", "--stats-interval")))?;
    if !args.host_root.join("proc").is_dir() {
        return Err(UsageError(format!(
            "--host-root {}: no proc directory there; give the directory where the host's \
             root is mounted (`/` on the host, `/host` in a container that mounts it there)",
            args.host_root.display()
        ))
        .into());
    }
    let netns = events::netns::resolve(&args.netns, &args.host_root).map_err(UsageError)?;
    let btf = session::prepare()?;
    let trace = match &export.trace_dir {
        Some(dir) => Some(
            sinks::trace::TraceWriter::new(dir, max_size, export.trace_keep as usize).map_err(
                |e| {
                    FatalError(format!(
                        "cannot write trace files in {}: {e}; pick a writable --trace-dir",
                        dir.display()
                    ))
                },
            )?,
        ),
        None => None,
    };
    let metrics = export.metrics_addr.map(|_| sinks::metrics::Metrics::new());
    let settings = Settings {
        ports: &ports,
        max_flows: args.max_flows,
        findings,
        format: args.format.into(),
        findings_only: args.findings.findings_only,
        trace,
        metrics: metrics.clone(),
        stats_interval,
        host_root: Some(args.host_root.clone()),
        node_name: args.node_name.clone(),
        netns,
        netns_files: args
            .netns
            .iter()
            .filter(|v| v.starts_with('/') || v.starts_with('.'))
            .map(std::path::PathBuf::from)
            .collect(),
        clean_flows: args.clean_flows,
    };
    session::runtime()?.block_on(async {
        if let (Some(metrics), Some(addr)) = (&metrics, export.metrics_addr) {
            metrics
                .serve(addr)
                .await
                .map_err(|e| FatalError(format!("{e:#}")))?;
        }
        // Before the start line: a signal sent as soon as it is read must stop, not kill.
        let stop = stop_signal(duration)?;
        let mut session = Session::start(btf, settings, BufWriter::new(std::io::stdout()))?;
        session.pump_until(stop).await?;
        session.finish()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Completes on SIGINT, SIGTERM, SIGHUP (the terminal or ssh session went away: what was
/// seen must still be flushed) or when `duration` has passed.
fn stop_signal(duration: Option<Duration>) -> Result<impl Future<Output = ()>> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => info!("SIGINT: stopping"),
            _ = sigterm.recv() => info!("SIGTERM: stopping"),
            _ = sighup.recv() => info!("SIGHUP: stopping"),
            _ = deadline => info!("--duration reached: stopping"),
        }
    })
}
