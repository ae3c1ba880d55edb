//! shuffletrace: eBPF packet-path tracer for the network failures that break Spark.
//!
//! Data path: probes (kernel programs, `probes`) -> events (`events`) -> flows (`flows`) ->
//! findings (`findings`, `remedies`) -> sinks (`sinks`).

mod btf;
mod cli;
mod clock;
mod events;
mod findings;
mod flows;
mod offsets;
mod probes;
mod remedies;
mod sinks;

use std::{
    io::{BufWriter, Write},
    os::fd::AsRawFd,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Parser as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracing::{info, warn};

use crate::{
    btf::Btf,
    cli::{Cli, Command, RunArgs, UsageError},
    clock::BootClock,
    events::{Event, ResetReasons},
    findings::{Aggregator, Correlator, Finding},
    flows::FlowTable,
    probes::{FatalError, KernelCounters, Probes},
    sinks::{Context, Output, Totals},
};

/// How often the collector drains the ring buffer when no wakeup came (records are submitted
/// without wakeups; see the kernel program).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often loss counters are checked and closed flows aged out.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        None => cli.run,
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(usage) = error.downcast_ref::<UsageError>() {
                eprintln!("shuffletrace: {usage}");
                ExitCode::from(2)
            } else if let Some(fatal) = error.downcast_ref::<FatalError>() {
                eprintln!("shuffletrace: {fatal}");
                ExitCode::from(1)
            } else {
                eprintln!("shuffletrace: error: {error:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default()
}

fn run(args: RunArgs) -> Result<()> {
    let ports = cli::parse_ports(&args.ports)?;
    let duration = args
        .duration
        .as_deref()
        .map(cli::parse_duration)
        .transpose()?;
    probes::check_privileges()?;
    let btf = Btf::from_kernel().map_err(|e| FatalError(format!("{e:#}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(trace(args, &btf, &ports, duration))
}

/// The userspace half of the data path, and its counts.
struct Collector<W: Write> {
    output: Output<W>,
    flows: FlowTable,
    correlator: Correlator,
    aggregator: Aggregator,
    findings_only: bool,
    totals: Totals,
    reported: KernelCounters,
    /// Set when stdout is gone (a closed pipe): stop cleanly.
    output_closed: bool,
    /// Scratch buffer for the findings of one event.
    found: Vec<Finding>,
}

impl<W: Write> Collector<W> {
    fn write_finding(&mut self, finding: &Finding) {
        self.totals.finding_lines += 1;
        self.totals.findings += finding.count;
        if !self.output_closed && self.output.finding(finding).is_err() {
            self.output_closed = true;
        }
    }

    /// Aggregates and prints the findings in `self.found`.
    fn publish(&mut self, cookie: u64) {
        let found = std::mem::take(&mut self.found);
        for finding in found {
            let (lines, folded) = self.aggregator.offer(finding);
            if let Some(id) = folded
                && let Some(flow) = self.flows.get_mut(cookie)
            {
                Correlator::folded(flow, id);
            }
            for line in &lines {
                self.write_finding(line);
            }
        }
    }

    fn process(&mut self, mut event: Event) {
        self.totals.events += 1;
        let flow = self.flows.observe(&mut event);
        self.correlator.on_event(&event, flow, &mut self.found);
        if !self.findings_only && !self.output_closed && self.output.event(&event).is_err() {
            self.output_closed = true;
        }
        self.publish(event.cookie);
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            match events::decode(&record) {
                Ok(event) => self.process(event),
                Err(error) => {
                    self.totals.decode_errors += 1;
                    warn!("undecodable ring-buffer record: {error}");
                }
            }
        }
        if !self.output_closed && self.output.flush().is_err() {
            self.output_closed = true;
        }
    }

    /// Warns about new losses since the last check, and ages out closed flows.
    fn housekeeping(&mut self, counters: KernelCounters) {
        let new = |now: u64, before: u64| now.saturating_sub(before);
        let lost = new(counters.ringbuf_full, self.reported.ringbuf_full);
        if lost > 0 {
            warn!("{lost} events lost: the ring buffer was full (counted in the stats line)");
        }
        let unowned = new(counters.owner_table_full, self.reported.owner_table_full);
        if unowned > 0 {
            warn!(
                "{unowned} flows lost process attribution: socket owner table full (--max-flows)"
            );
        }
        let skipped = new(counters.recursion_misses, self.reported.recursion_misses);
        if skipped > 0 {
            warn!("{skipped} kernel program runs skipped by the kernel (recursion on a CPU)");
        }
        self.reported = counters;
        let now = BootClock::now_boot_ns();
        for flow in self.flows.expire(now) {
            self.correlator.on_flow_end(flow, now, &mut self.found);
        }
        self.publish(0);
        for line in self.aggregator.due(now) {
            self.write_finding(&line);
        }
        if !self.output_closed && self.output.flush().is_err() {
            self.output_closed = true;
        }
        self.totals.flows = self.flows.len();
        self.totals.flow_evictions = self.flows.evictions();
    }

    /// At shutdown: owed updates and pending aggregates go out; nothing detected is lost.
    fn finish(&mut self) {
        let now = BootClock::now_boot_ns();
        for flow in self.flows.drain() {
            self.correlator.on_flow_end(flow, now, &mut self.found);
        }
        self.publish(0);
        for line in self.aggregator.flush() {
            self.write_finding(&line);
        }
    }
}

/// Registers a ring buffer (events or logs) with the runtime for readability.
fn readable<T: AsRawFd>(ring: T) -> Result<AsyncFd<T>> {
    // SAFETY: the ring buffer owns its map fd and keeps it open and unchanged for as long as
    // the AsyncFd that owns the ring buffer lives.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn trace(args: RunArgs, btf: &Btf, ports: &[u16], duration: Option<Duration>) -> Result<()> {
    let mut probes = Probes::load(btf, ports, args.max_flows)?;
    // Kernel-side log records (rare: first overflow of a table). Dropping the logger would
    // close the map the programs write to, so it lives as long as the programs.
    let mut logger = match aya_log::EbpfLogger::init(&mut probes.ebpf) {
        Ok(logger) => Some(readable(logger).context("polling the eBPF log buffer")?),
        Err(error) => {
            warn!("kernel-side logging unavailable: {error}");
            None
        }
    };
    let mut ring = readable(probes.take_events()?).context("polling the ring buffer")?;

    let kernel = kernel_release();
    let reset_reasons = ResetReasons::new(offsets::reset_reasons(btf));
    let context_reasons = reset_reasons.clone();
    let context = Context {
        node: node_name(),
        clock: BootClock::new(),
        reset_reasons,
    };
    let output = Output::new(args.format, BufWriter::new(std::io::stdout()), context);
    let config = args.findings.config()?;
    let mut collector = Collector {
        output,
        flows: FlowTable::new(args.max_flows as usize),
        correlator: Correlator::new(config, context_reasons),
        aggregator: Aggregator::new(config.aggregate_window_ns, args.max_flows as usize),
        findings_only: args.findings.findings_only,
        totals: Totals::default(),
        reported: KernelCounters::default(),
        output_closed: false,
        found: Vec::new(),
    };
    collector
        .output
        .start(&kernel, ports, &probes.attached, &probes.missing)
        .context("writing to stdout")?;
    for missing in &probes.missing {
        warn!(
            "tracepoint {} not attached ({}); running with the rest",
            missing.tracepoint, missing.reason
        );
    }
    info!(
        "watching TCP ports {} on node {} (kernel {kernel}); attached {} of {} kernel programs",
        cli::format_ports(ports),
        collector.output.context().node,
        probes.attached.len(),
        probes::PROGRAMS.len() + 1
    );

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    loop {
        tokio::select! {
            _ = poll.tick() => collector.drain(ring.get_mut()),
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                collector.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            guard = async { logger.as_mut().expect("guarded").readable_mut().await },
                if logger.is_some() => {
                let mut guard = guard.context("waiting on the eBPF log buffer")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = housekeeping.tick() => collector.housekeeping(probes.counters()),
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = &mut deadline => { info!("--duration reached: stopping"); break; }
        }
        if collector.output_closed {
            info!("stdout closed: stopping");
            break;
        }
    }

    // Detach first so nothing new arrives, then drain what the kernel already wrote.
    probes.detach();
    collector.drain(ring.get_mut());
    if let Some(logger) = logger.as_mut() {
        logger.get_mut().flush();
    }
    let counters = probes.counters();
    collector.housekeeping(counters);
    collector.finish();
    let totals = collector.totals;
    if !collector.output_closed {
        collector
            .output
            .stats(&counters, &totals)
            .context("writing to stdout")?;
        collector.output.flush().context("writing to stdout")?;
    }
    info!(
        "{} events, {} findings in {} lines, {} lost (ring buffer full), {} undecodable, \
         {} program runs skipped, {} flows tracked, {} evicted",
        totals.events,
        totals.findings,
        totals.finding_lines,
        counters.ringbuf_full,
        totals.decode_errors,
        counters.recursion_misses,
        totals.flows,
        totals.flow_evictions
    );
    Ok(())
}
