//! A tracing session: the kernel programs loaded and attached, the ring buffer and the kernel
//! log drained into the pipeline until the caller's stop condition, then a clean shutdown that
//! loses nothing already recorded.

use std::{future::Future, io::Write, os::fd::AsRawFd, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::{
    config::{self, Format, Thresholds},
    events::clock::BootClock,
    events::{KernelFacts, ResetReasons},
    kernel::btf::Btf,
    kernel::counters::KernelCounters,
    kernel::kernel_release,
    kernel::loader::{KernelPrograms, LoadOptions},
    kernel::offsets,
    kernel::prefetch::Prefetch,
    pipeline::Pipeline,
    sinks::{Context, Output, Totals},
};

/// How often the collector drains the ring buffer when no wakeup came (records are submitted
/// without wakeups; see the kernel program).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often loss counters are checked, closed flows aged out, aggregates closed and idle
/// checks run (more often for short NAT thresholds: a tenth of it, at least every 100 ms).
fn housekeeping_interval(nat_idle: Duration) -> Duration {
    (nat_idle / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Registers a ring buffer with the runtime for readability.
fn readable<T: AsRawFd>(ring: T) -> Result<AsyncFd<T>> {
    // SAFETY: the ring buffer owns its map fd and keeps it open and unchanged for as long as
    // the AsyncFd that owns the ring buffer lives.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn node_name(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The kernel's tick rate and where it was read (decompressing /proc/config.gz takes
/// ~10 ms), started at launch.
static KERNEL_HZ: Prefetch<Result<(u32, &'static str), String>> = Prefetch::new();

/// Starts reading what the session needs from the kernel, in the background.
pub fn start_kernel_reads() {
    KERNEL_HZ.start(|| crate::kernel::hz::kernel_hz(&kernel_release()));
}

/// Gives the kernel the owners of the watched listeners that were already listening (it
/// sees listen() only once attached): connections they accept then name their process.
fn name_existing_listeners(
    probes: &mut KernelPrograms,
    ports: &[u16],
    proc_root: &Path,
    by_netns: &std::collections::HashMap<u32, Vec<u32>>,
) {
    let started = std::time::Instant::now();
    let watched: std::collections::HashSet<u16> = ports.iter().copied().collect();
    let listeners = crate::events::procs::existing_listeners(proc_root, by_netns, &|port| {
        watched.contains(&port)
    });
    let found = listeners.len();
    let added = probes.add_listeners(listeners.into_iter().map(|listener| {
        let mut comm = [0u8; 16];
        let name = listener.comm.as_bytes();
        let len = name.len().min(comm.len() - 1);
        comm[..len].copy_from_slice(&name[..len]);
        (
            tracer_ebpf::ListenerKey {
                netns: listener.netns,
                port: listener.port,
                _pad: 0,
            },
            tracer_ebpf::SockOwner {
                pid: listener.pid,
                tid: listener.pid,
                uid: listener.uid,
                flags: tracer_ebpf::flag::OWNER_KNOWN,
                comm,
                ..Default::default()
            },
        )
    }));
    tracing::debug!(
        "{found} watched listeners already open, {added} named for the kernel, in {:?}",
        started.elapsed()
    );
}

/// What a session needs to start.
pub struct Settings<'a> {
    pub ports: &'a [u16],
    pub max_flows: u32,
    pub findings: Thresholds,
    pub format: Format,
    pub findings_only: bool,
    pub trace: Option<crate::sinks::trace::TraceWriter>,
    pub metrics: Option<crate::sinks::metrics::Metrics>,
    pub stats_interval: Duration,
    /// Root of the host's filesystem for pod attribution; None turns attribution off.
    pub host_root: Option<std::path::PathBuf>,
    /// `--node-name` (else NODE_NAME, else the host name).
    pub node_name: Option<String>,
    /// `--netns`: the network namespaces watched (empty: all).
    pub netns: std::collections::BTreeSet<u32>,
    /// The `--netns` values that are namespace files (their addresses are read inside).
    pub netns_files: Vec<std::path::PathBuf>,
    /// `--clean-flows`: print clean flows' summaries too.
    pub clean_flows: bool,
}

pub struct Session<W: Write> {
    probes: KernelPrograms,
    ring: AsyncFd<RingBuf<MapData>>,
    pub pipeline: Pipeline<W>,
    housekeeping_every: Duration,
}

impl<W: Write> Session<W> {
    /// Loads and attaches the programs and writes the start line. Must run inside the runtime.
    /// Takes the kernel's parsed BTF and frees it once the programs are loaded: it is the
    /// largest allocation the collector ever makes, and never needed again.
    pub fn start(btf: Btf, settings: Settings<'_>, out: W) -> Result<Self> {
        let options = LoadOptions {
            ports: settings.ports,
            max_flows: settings.max_flows,
            // An idle period is marked at half the NAT threshold.
            idle_mark_ns: settings.findings.nat_idle.threshold_ns() / 2,
            repeat_window_ns: settings.findings.aggregate_window_ns,
            netns: &settings.netns,
            host_root: settings
                .host_root
                .as_deref()
                .unwrap_or(std::path::Path::new("/")),
        };
        let mut probes = KernelPrograms::load(&btf, &options)?;
        // One pass over /proc serves the listeners and the addresses, of the watched
        // namespaces only.
        let proc_root = options.host_root.join("proc");
        let by_netns = crate::events::procs::pids_by_netns(&proc_root, &|netns| {
            settings.netns.is_empty() || settings.netns.contains(&netns)
        });
        name_existing_listeners(&mut probes, settings.ports, &proc_root, &by_netns);
        // Probe runs name no host root and need no addresses.
        let scope = crate::sinks::Scope {
            ports: settings.ports.to_vec(),
            netns: settings.netns.iter().copied().collect(),
            addresses: match &settings.host_root {
                Some(_) => crate::events::netns::local_addresses(
                    &proc_root,
                    &by_netns,
                    &settings.netns_files,
                ),
                None => Vec::new(),
            },
        };
        let ring = readable(probes.take_events()?).context("polling the ring buffer")?;

        let kernel = kernel_release();
        let reasons = ResetReasons::new(offsets::reset_reasons(&btf));
        drop(btf);
        crate::pipeline::release_freed_memory();
        let findings = settings.findings;
        let hz = match KERNEL_HZ
            .take()
            .unwrap_or_else(|| crate::kernel::hz::kernel_hz(&kernel))
        {
            Ok((hz, source)) => {
                tracing::debug!("kernel HZ {hz} (from {source})");
                hz
            }
            Err(error) => {
                warn!("kernel tick rate unknown ({error}); assuming 250 for keepalive times");
                250
            }
        };
        let context = Context {
            node: node_name(settings.node_name.as_deref()),
            clock: BootClock::new(),
            reset_reasons: reasons.clone(),
        };
        let mut output = Output::new(settings.format, out, context);
        if let Some(trace) = settings.trace {
            output.set_trace(trace);
        }
        let mut pipeline = Pipeline::new(
            output,
            findings,
            KernelFacts { hz, reasons },
            settings.max_flows as usize,
        );
        pipeline.findings_only = settings.findings_only;
        pipeline.clean_flows = settings.clean_flows;
        pipeline.flow_keys = probes.flow_keys;
        pipeline.metrics = settings.metrics;
        pipeline.attributor = settings
            .host_root
            .as_deref()
            .map(crate::events::k8s::Attributor::new);
        pipeline.process_names = crate::events::procs::ProcessNames::new(
            settings
                .host_root
                .as_deref()
                .unwrap_or(std::path::Path::new("/")),
        );
        pipeline.stats_interval_ns = settings.stats_interval.as_nanos() as u64;
        pipeline
            .output
            .start(
                &kernel,
                &probes.attached,
                &probes.missing,
                &probes.unavailable,
                &findings.nat_idle,
                &scope,
            )
            .context("writing to stdout")?;
        if let Some(metrics) = &pipeline.metrics {
            metrics.programs_missing(probes.missing.len());
        }
        for missing in &probes.missing {
            warn!(
                "{} not attached ({}); running with the rest",
                missing.tracepoint, missing.reason
            );
        }
        if !probes.unavailable.is_empty() {
            warn!(
                "on this kernel ({kernel}) these findings cannot be given: {}",
                probes.unavailable.join(", ")
            );
        }
        info!(
            "watching TCP ports {} on node {} (kernel {kernel}); attached {} of {} kernel \
             programs; NAT idle timeout {}",
            config::format_ports(settings.ports),
            pipeline.output.context().node,
            probes.attached.len(),
            probes.attached.len() + probes.missing.len(),
            findings.nat_idle
        );
        Ok(Self {
            probes,
            ring,
            pipeline,
            housekeeping_every: housekeeping_interval(settings.findings.nat_idle.threshold),
        })
    }

    /// Feeds kernel events to the pipeline until `stop` completes (its output is returned), or
    /// until the output is gone (None).
    pub async fn pump_until<F: Future>(&mut self, stop: F) -> Result<Option<F::Output>> {
        let Self {
            probes,
            ring,
            pipeline,
            housekeeping_every,
        } = self;
        tokio::pin!(stop);
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        let mut housekeeping = tokio::time::interval(*housekeeping_every);
        loop {
            tokio::select! {
                output = &mut stop => return Ok(Some(output)),
                _ = poll.tick() => {
                    pipeline.drain(ring.get_mut());
                    // An idle repeat entry is removed as soon as it may be: until then the
                    // kernel sends its key's occurrences in full (a storm that resumes).
                    let now = BootClock::now_boot_ns();
                    if pipeline.repeats.removal_due(now) {
                        pipeline.report_repeats(now, probes);
                    }
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("waiting on the ring buffer")?;
                    pipeline.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = housekeeping.tick() => pipeline.housekeeping(probes.counters(), probes),
            }
            if pipeline.output_closed {
                info!("stdout closed: stopping");
                return Ok(None);
            }
        }
    }

    /// Detaches the programs, drains what the kernel already wrote, writes the owed findings
    /// and the stats line, and flushes.
    pub fn finish(mut self) -> Result<(Pipeline<W>, Totals, KernelCounters)> {
        self.probes.detach();
        self.pipeline.drain(self.ring.get_mut());
        let counters = self.probes.counters();
        self.pipeline.housekeeping(counters, &mut self.probes);
        self.pipeline.finish();
        let totals = self.pipeline.totals;
        // To the trace files as well when stdout is gone (the output skips it then).
        let written = self
            .pipeline
            .output
            .stats(&counters, &totals, &self.pipeline.summaries)
            .and_then(|()| self.pipeline.output.flush());
        if written.is_err() && !self.pipeline.output_closed {
            info!("stdout closed: the final lines went to the trace files only");
        }
        info!(
            "{} events ({} clean flows summarised), {} findings in {} lines, {} lost (ring \
             buffer full), {} undecodable, {} program runs skipped ({} flows ended with their \
             close unseen), {} flows whose end the kernel never reported, {} flows tracked, {} \
             evicted",
            totals.events,
            self.pipeline.summaries.total(),
            totals.findings,
            totals.finding_lines,
            counters.ringbuf_full,
            totals.decode_errors,
            counters.recursion_misses,
            totals.closes_unseen,
            totals.slots_expired,
            totals.flows,
            totals.flow_evictions
        );
        Ok((self.pipeline, totals, counters))
    }
}

/// Checks privileges and reads the kernel's BTF: what every tracing command needs first.
pub fn prepare() -> Result<Btf> {
    crate::kernel::privileges::check_privileges()?;
    crate::kernel::loader::start_kernel_reads();
    start_kernel_reads();
    crate::kernel::loader::await_loader_parse();
    let started = std::time::Instant::now();
    let btf = Btf::from_kernel().map_err(|e| crate::error::FatalError(format!("{e:#}")))?;
    tracing::debug!("kernel BTF parsed in {:?}", started.elapsed());
    Ok(btf)
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
