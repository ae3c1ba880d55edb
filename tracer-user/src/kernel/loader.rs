//! Loading and attaching the kernel programs: offsets from BTF and every knob in one
//! `LoadOptions`, verification on two threads, attach where each program's spec says, and the
//! adapter the stages above read the kernel's tables through.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        mpsc::{Receiver, sync_channel},
    },
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupSkbAttachType, Program},
};
use tracer_ebpf::{
    FlowActivity, FlowSlot, KernelOffsets, ListenerKey, RepeatCount, RepeatKey, SockOwner, counter,
};

/// `bpf_map_update_elem` flag: only add, never replace.
const BPF_NOEXIST: u64 = 1;

use crate::{
    error::FatalError,
    kernel::attach_btf,
    kernel::btf::Btf,
    kernel::cgroup::{attach_cgroup_skb, cgroup2_root},
    kernel::counters::{KernelCounters, recursion_misses},
    kernel::flowkey::FlowKeys,
    kernel::kernel_release,
    kernel::offsets,
    kernel::prefetch::Prefetch,
    kernel::programs::{self, Attach, ProgramSpec},
};

/// The kernel programs, built for the bpf target by build.rs and embedded in this binary.
static TRACER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Ring-buffer size set in the kernel program (4 MiB: its data pages are mapped twice into the
/// collector, so they count twice in its RSS); the reader is woken when an eighth of
/// it is waiting, otherwise it drains on its poll timer.
const RING_BYTES: u64 = 4 * 1024 * 1024;
const WAKEUP_BYTES: u64 = RING_BYTES / 8;

/// aya's loader, made at launch: `EbpfLoader::new()` parses the kernel's BTF itself (~30 ms,
/// a ~19 MiB peak), and probing the kernel's BPF features takes ~25 ms more, most of it
/// waiting on the kernel. The object has no CO-RE relocations, so the loader needs no BTF:
/// its parse is dropped on that thread as soon as it is made, not held until the load.
static LOADER: Prefetch<EbpfLoader<'static>> = Prefetch::new();

/// Told when the loader's throwaway parse is freed (see `await_loader_parse`).
static LOADER_PARSE_FREED: Mutex<Option<Receiver<()>>> = Mutex::new(None);

/// Starts making aya's loader in the background: its parse first, then the feature probes,
/// which overlap the collector's own BTF parse.
pub fn start_kernel_reads() {
    let (freed, wait) = sync_channel(1);
    if let Ok(mut slot) = LOADER_PARSE_FREED.lock() {
        *slot = Some(wait);
    }
    LOADER.start(move || {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        crate::pipeline::release_freed_memory();
        let _ = freed.send(());
        aya::features();
        loader
    });
}

/// Waits until the loader's own parse of the kernel BTF is made and freed (or its thread
/// is gone). The collector's BTF index is read after it, not next to it: the two at once
/// were the collector's peak RSS (~34 MiB; ~25 MiB one after the other, for ~10 ms more
/// start-up).
pub fn await_loader_parse() {
    let wait = LOADER_PARSE_FREED
        .lock()
        .ok()
        .and_then(|mut slot| slot.take());
    if let Some(wait) = wait {
        let _ = wait.recv();
    }
}

/// Verification order: the costliest first, so two workers finish together.
const VERIFY_ORDER: [&str; 10] = [
    programs::CORE,
    INGRESS_PROGRAM,
    "inet_sk_error_report",
    EGRESS_PROGRAM,
    "tcp_send_reset",
    "tcp_receive_reset",
    "tcp_retransmit_skb",
    "kfree_skb",
    "tcp_retransmit_synack",
    programs::TEARDOWN,
];

/// Loads (verifies) every program this kernel needs on two threads: the kernel's verifier is
/// most of start-up, and it checks each program independently. Returns each program's
/// outcome.
fn verify_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    aya_btf: &aya::Btf,
    offsets: &KernelOffsets,
) -> HashMap<String, Result<()>> {
    let mut programs: Vec<(String, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| programs::needed(name, offsets))
        .map(|(name, program)| (name.to_owned(), program))
        .collect();
    programs.sort_by_key(|(name, _)| {
        VERIFY_ORDER
            .iter()
            .position(|n| n == name)
            .unwrap_or(usize::MAX)
    });
    let queue = Mutex::new(VecDeque::from(programs));
    let verify = |name: &str, program: &mut Program| -> Result<()> {
        let started = std::time::Instant::now();
        match program {
            Program::BtfTracePoint(program) => {
                let Some(Attach::Tracepoint(tracepoint)) = programs::spec(name).map(|p| p.attach)
                else {
                    return Err(anyhow!("program {name} has no tracepoint"));
                };
                if btf.tracepoint_arg_count(tracepoint).is_none() {
                    return Err(anyhow!("this kernel has no such tracepoint"));
                }
                program
                    .load(tracepoint, aya_btf)
                    .map_err(|e| anyhow!("{}", verifier_message(&e)))?;
            }
            Program::CgroupSkb(program) => program
                .load()
                .map_err(|e| anyhow!("{}", verifier_message(&e)))?,
            _ => return Err(anyhow!("program {name} has an unexpected type")),
        }
        // The verifier's work (instructions processed), for the kernel matrix and the bench.
        let insns = program
            .info()
            .ok()
            .and_then(|info| info.verified_instruction_count());
        tracing::debug!(
            "{name} verified in {:?} ({} instructions processed)",
            started.elapsed(),
            insns.map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
        Ok(())
    };
    let worker = || {
        let mut done = Vec::new();
        loop {
            let next = queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some((name, program)) = next else {
                return done;
            };
            let outcome = verify(&name, program);
            done.push((name, outcome));
        }
    };
    std::thread::scope(|scope| {
        let helper = scope.spawn(worker);
        let mut outcomes: HashMap<String, Result<()>> = worker().into_iter().collect();
        if let Ok(done) = helper.join() {
            outcomes.extend(done);
        }
        outcomes
    })
}

/// A kernel program we could not attach, and why (with what the run loses without it).
#[derive(Debug, Clone)]
pub struct Missing {
    pub tracepoint: &'static str,
    pub reason: String,
}

impl Missing {
    fn new(spec: &ProgramSpec, why: &str) -> Self {
        Self {
            tracepoint: spec.name,
            reason: format!("{why}; {}", spec.without),
        }
    }
}

/// The test hook `SHUFFLETRACE_TEST_SKIP_CLOSE`: the state program skips every CLOSE as the
/// kernel does when it would recurse, so the integration tests can check what happens then
/// (see `tracer_ebpf`'s `programs::teardown`); `destroy` too, the destroy program skips every
/// socket (see `kernel::stale`); `established`, the state program also skips every change
/// after a flow is established (a silent slot whose socket is gone). Never set in use; when
/// unset the verifier removes the checks.
fn test_skip_close() -> u32 {
    match std::env::var_os("SHUFFLETRACE_TEST_SKIP_CLOSE") {
        None => 0,
        Some(value) if value == "destroy" => 2,
        Some(value) if value == "established" => 3,
        Some(_) => 1,
    }
}

/// The bench hook `SHUFFLETRACE_BENCH_HOOKS_ONLY`, for `cargo xtask bench`'s floor of this
/// design: `1`, every program returns as soon as it runs (nothing is traced), so a load
/// measures what the hooks alone cost; `tracepoints`, the same without the cgroup_skb
/// programs attached (what the per-packet hooks add). Never set in use; when unset the
/// verifier removes the checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchHooks {
    Off,
    All,
    Tracepoints,
}

impl BenchHooks {
    fn from_env() -> Self {
        match std::env::var_os("SHUFFLETRACE_BENCH_HOOKS_ONLY") {
            Some(value) if value == "1" => Self::All,
            Some(value) if value == "tracepoints" => Self::Tracepoints,
            _ => Self::Off,
        }
    }

    /// The value of the programs' `BENCH_HOOKS_ONLY`.
    fn global(self) -> u32 {
        u32::from(self != Self::Off)
    }

    /// Whether this program stays unattached.
    fn skips(self, spec: &ProgramSpec) -> bool {
        self == Self::Tracepoints && !matches!(spec.attach, Attach::Tracepoint(_))
    }
}

/// Every knob of the kernel programs, set in one place before load: the read-only globals
/// (`IDLE_MARK_NS`, `REPEAT_WINDOW_NS`; `OFFSETS` and `WAKEUP_BYTES` are facts of this
/// kernel and this binary), the table sizes, the watched-port set and where to attach.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The watched-port set (`WATCHED_PORTS`).
    pub ports: &'a [u16],
    /// Size of `FLOWS` and `ACTIVITY` (`--max-flows`).
    pub max_flows: u32,
    /// A data gap at least this long ends an idle period (`IDLE_MARK_NS`).
    pub idle_mark_ns: u64,
    /// Window of the kernel's repeat counting (`REPEAT_WINDOW_NS`; 0: off).
    pub repeat_window_ns: u64,
    /// Where the host's root is (the cgroup v2 root is found through it).
    pub host_root: &'a Path,
    /// The network namespaces watched (`FILTER_NETNS`, `NETNS_FILTER`; empty: all).
    pub netns: &'a std::collections::BTreeSet<u32>,
}

/// Loaded and attached kernel programs.
pub struct KernelPrograms {
    pub ebpf: Ebpf,
    pub attached: Vec<&'static str>,
    pub missing: Vec<Missing>,
    /// Finding kinds no attached program can give (see `programs::unavailable_kinds`).
    pub unavailable: Vec<&'static str>,
    /// How the programs' flow keys are shown (opaque numbers where they are kernel
    /// addresses; see `crate::kernel::flowkey`). Keys going in and out of this type are shown keys.
    pub flow_keys: FlowKeys,
    /// Runs the kernel skipped, read just before the programs were unloaded (an unloaded
    /// program's count is gone with it): the final stats line says what the warnings said.
    recursion_misses_at_detach: u64,
    /// `--netns` (empty: all): the kernel sends no event of other namespaces, and the scans
    /// of its tables (idle flows, counted repeats) skip their entries too.
    netns: std::collections::BTreeSet<u32>,
    /// `--host-root`: where the slot sweep finds a flow's network namespace (the host's
    /// `/proc`, `/run/netns`) to ask which sockets still exist.
    host_root: PathBuf,
    /// The slot sweep's question to the kernel, while it is out.
    slot_query: crate::kernel::slot_query::SlotQuery,
}

impl crate::events::sources::ActivitySource for KernelPrograms {
    fn scan(&self, each: &mut dyn FnMut(u64, &FlowActivity)) {
        // An entry removed while the scan passes is skipped (the flow closed).
        let keys = self.flow_keys;
        self.scan_hash::<u64, FlowActivity>("ACTIVITY", &mut |cookie, record| {
            if self.watches(record.netns) {
                each(keys.shown(*cookie), record)
            }
        });
    }

    fn slot(&self, cookie: u64) -> Option<FlowSlot> {
        let map = self.ebpf.map("FLOWS")?;
        let slots = aya::maps::HashMap::<_, u64, FlowSlot>::try_from(map).ok()?;
        slots.get(&self.flow_keys.kernel(cookie), 0).ok()
    }
}

impl crate::events::sources::SlotSource for KernelPrograms {
    fn expire_slots(&mut self, now_ns: u64, max_age: std::time::Duration) -> u64 {
        use crate::kernel::stale::{Verdict, judge};
        // The question of the last sweep is still out: this one waits for the next.
        if self.slot_query.busy() {
            return 0;
        }
        // Candidates: silent slots (their last packets are read when they are judged).
        let mut candidates = Vec::new();
        self.scan_hash::<u64, FlowSlot>("FLOWS", &mut |key, slot| {
            if judge(slot, None, now_ns, max_age) != Verdict::Keep {
                candidates.push((*key, slot.netns, (slot.owner.pid, slot.owner.tid)));
            }
        });
        if candidates.is_empty() {
            return 0;
        }
        // Flows keyed by address (5.10) cannot be asked about: judged by time alone, now.
        if self.flow_keys != FlowKeys::COOKIES {
            return self.drop_stale(&candidates, &HashMap::new(), now_ns, max_age);
        }
        // Whether their sockets still exist, asked per namespace off the collector's loop
        // (see `slot_query`); the answer is taken by `collect_expired`.
        let host_root = self.host_root.clone();
        self.slot_query.ask(candidates, move |candidates| {
            crate::kernel::sockdiag::live_sockets(&host_root, candidates)
        });
        0
    }

    fn collect_expired(&mut self, now_ns: u64, max_age: std::time::Duration) -> u64 {
        match self.slot_query.answer() {
            Some((candidates, alive)) => self.drop_stale(&candidates, &alive, now_ns, max_age),
            None => 0,
        }
    }
}

impl KernelPrograms {
    /// Drops the candidates the sweep condemns, given which of their sockets the kernel says
    /// still exist (`alive`, per namespace it could ask), and their activity records; returns
    /// how many went. Each slot and last packet is read again first: the flow may have moved
    /// on since it was found silent (a cookie is never reused, so a socket gone stays gone).
    fn drop_stale(
        &mut self,
        candidates: &[crate::kernel::slot_query::Candidate],
        alive: &crate::kernel::slot_query::Alive,
        now_ns: u64,
        max_age: std::time::Duration,
    ) -> u64 {
        use crate::kernel::stale::{drops, judge};
        let last_packets: Vec<Option<u64>> = {
            let activity = self
                .ebpf
                .map("ACTIVITY")
                .and_then(|map| aya::maps::HashMap::<_, u64, FlowActivity>::try_from(map).ok());
            candidates
                .iter()
                .map(|(key, _, _)| {
                    activity
                        .as_ref()
                        .and_then(|table| table.get(key, 0).ok())
                        .map(|a| a.last_packet_ns)
                })
                .collect()
        };
        let mut expired = Vec::new();
        if let Some(map) = self.ebpf.map_mut("FLOWS")
            && let Ok(mut slots) = aya::maps::HashMap::<_, u64, FlowSlot>::try_from(map)
        {
            for ((key, netns, _), last_packet) in candidates.iter().zip(last_packets) {
                let alive = alive.get(netns).map(|cookies| cookies.contains(key));
                let goes = slots
                    .get(key, 0)
                    .is_ok_and(|slot| drops(judge(&slot, last_packet, now_ns, max_age), alive));
                if goes && slots.remove(key).is_ok() {
                    expired.push(*key);
                }
            }
        }
        // Their activity records go too; their hints stay counted (a hint only says "maybe").
        if let Some(map) = self.ebpf.map_mut("ACTIVITY")
            && let Ok(mut records) = aya::maps::HashMap::<_, u64, FlowActivity>::try_from(map)
        {
            for key in &expired {
                let _ = records.remove(key);
            }
        }
        expired.len() as u64
    }
}

impl crate::events::sources::RepeatSource for KernelPrograms {
    fn repeats(&self, each: &mut dyn FnMut(&RepeatKey, &RepeatCount)) {
        self.scan_hash::<RepeatKey, RepeatCount>("REPEATS", &mut |key, count| {
            if self.watches(key.netns) {
                each(key, count)
            }
        });
    }

    fn forget(&mut self, key: &RepeatKey) {
        if let Some(map) = self.ebpf.map_mut("REPEATS")
            && let Ok(mut table) = aya::maps::HashMap::<_, RepeatKey, RepeatCount>::try_from(map)
        {
            // Already gone is fine: nothing else removes entries.
            let _ = table.remove(key);
        }
    }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (before 5.11).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels 5.11 and later");
    }
}

impl KernelPrograms {
    /// Whether a network namespace is watched (`--netns`).
    fn watches(&self, netns: u32) -> bool {
        self.netns.is_empty() || self.netns.contains(&netns)
    }

    /// Loads the programs with offsets from `btf`, fills the watched-port set, and attaches
    /// every tracepoint this kernel has. Tracepoints it lacks are reported in `missing`.
    pub fn load(btf: &Btf, options: &LoadOptions<'_>) -> Result<Self> {
        let LoadOptions {
            ports,
            max_flows,
            idle_mark_ns,
            repeat_window_ns,
            host_root,
            netns,
        } = *options;
        let filter_netns = u32::from(!netns.is_empty());
        raise_memlock_limit();
        let offsets = offsets::resolve(btf)?;
        tracing::debug!("kernel offsets from BTF: {offsets:?}");
        // The tp_btf attach targets at their kernel type ids (see `attach_btf`).
        let started = std::time::Instant::now();
        let tracepoints: Vec<&str> = programs::PROGRAMS
            .iter()
            .filter_map(|spec| match spec.attach {
                Attach::Tracepoint(tracepoint) => Some(tracepoint),
                _ => None,
            })
            .collect();
        let aya_btf = attach_btf::for_tracepoints(btf, &tracepoints)?;
        tracing::debug!(
            "attach targets' BTF for aya ready after {:?}",
            started.elapsed()
        );
        let bench_hooks = BenchHooks::from_env();
        if bench_hooks != BenchHooks::Off {
            tracing::warn!(
                "SHUFFLETRACE_BENCH_HOOKS_ONLY is set: the programs return at once, nothing is \
                 traced"
            );
        }
        let mut loader = LOADER.take().unwrap_or_default();
        let mut ebpf = loader
            // The object has no CO-RE relocations: the loader needs no BTF of its own.
            .btf(None)
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_BYTES", &WAKEUP_BYTES, true)
            .override_global("IDLE_MARK_NS", &idle_mark_ns, true)
            .override_global("REPEAT_WINDOW_NS", &repeat_window_ns, true)
            .override_global("FILTER_NETNS", &filter_netns, true)
            .override_global("TEST_SKIP_CLOSE", &test_skip_close(), true)
            .override_global("BENCH_HOOKS_ONLY", &bench_hooks.global(), true)
            .map_max_entries("FLOWS", max_flows.max(1))
            .map_max_entries("ACTIVITY", max_flows.max(1))
            .load(TRACER_OBJECT)
            .context("loading the eBPF object")?;
        tracing::debug!(
            "eBPF object loaded (maps created) at {:?}",
            started.elapsed()
        );

        let mut watched: Array<_, u8> = Array::try_from(
            ebpf.map_mut("WATCHED_PORTS")
                .ok_or_else(|| anyhow!("no WATCHED_PORTS map"))?,
        )?;
        for &port in ports {
            watched
                .set(u32::from(port), 1, 0)
                .with_context(|| format!("adding port {port} to the watched set"))?;
        }

        let mut filter: aya::maps::HashMap<_, u32, u8> = aya::maps::HashMap::try_from(
            ebpf.map_mut("NETNS_FILTER")
                .ok_or_else(|| anyhow!("no NETNS_FILTER map"))?,
        )?;
        for &inode in netns {
            filter
                .insert(inode, 1, 0)
                .with_context(|| format!("adding network namespace {inode} to the watched set"))?;
        }

        let mut verified = verify_all(&mut ebpf, btf, &aya_btf, &offsets);
        let root = cgroup2_root(host_root);
        let mut attached = Vec::new();
        let mut missing = Vec::new();
        for spec in &programs::PROGRAMS {
            if bench_hooks.skips(spec) {
                continue;
            }
            if !programs::needed(spec.name, &offsets) {
                if let Some(why) = programs::not_applicable(spec.name, &offsets) {
                    missing.push(Missing::new(spec, why));
                }
                continue;
            }
            let result = verified
                .remove(spec.name)
                .unwrap_or_else(|| Err(anyhow!("program {} not in the object", spec.name)))
                .and_then(|()| attach(&mut ebpf, spec, &root));
            match result {
                Ok(()) => attached.push(spec.name),
                Err(e) => missing.push(Missing::new(spec, &format!("{e:#}"))),
            }
        }
        if let Some(core) = missing.iter().find(|m| m.tracepoint == programs::CORE) {
            return Err(FatalError(format!(
                "this kernel ({}) cannot run shuffletrace: its core program {} did not load \
                 ({}). shuffletrace needs {} or later; kernels verified: 5.10 (degraded), 6.1, \
                 6.12, 6.18",
                Some(kernel_release())
                    .filter(|release| !release.is_empty())
                    .unwrap_or_else(|| "unknown release".to_owned()),
                core.tracepoint,
                core.reason,
                programs::OLDEST_KERNEL
            ))
            .into());
        }
        let unavailable =
            programs::unavailable_kinds(&missing.iter().map(|m| m.tracepoint).collect::<Vec<_>>());
        Ok(Self {
            ebpf,
            attached,
            missing,
            unavailable,
            recursion_misses_at_detach: 0,
            netns: netns.clone(),
            host_root: host_root.to_path_buf(),
            slot_query: Default::default(),
            flow_keys: if offsets.flow_key_is_address != 0 {
                FlowKeys::addresses()
            } else {
                FlowKeys::COOKIES
            },
        })
    }

    /// Calls `each` with every entry of one of the programs' hash maps: in batches where the
    /// kernel can (a few syscalls for the whole table), else entry by entry.
    fn scan_hash<K: aya::Pod, V: aya::Pod>(&self, name: &str, each: &mut dyn FnMut(&K, &V)) {
        let Some(map) = self.ebpf.map(name) else {
            return;
        };
        if let aya::maps::Map::HashMap(data) = map {
            match crate::kernel::map_batch::for_each(data, each) {
                Ok(()) => return,
                Err(crate::kernel::map_batch::BatchError::Unsupported) => {}
                Err(crate::kernel::map_batch::BatchError::Io(error)) => {
                    tracing::debug!("reading {name} in batches: {error}");
                    return;
                }
            }
        }
        let Ok(table) = aya::maps::HashMap::<_, K, V>::try_from(map) else {
            return;
        };
        for (key, value) in table.iter().flatten() {
            each(&key, &value);
        }
    }

    /// Names the owners of listeners that were listening before the programs were attached
    /// (the kernel learns owners at listen()): the sockets they accept get an owner too. An
    /// entry the kernel already made is newer and stays. Returns how many were added.
    pub fn add_listeners(
        &mut self,
        listeners: impl IntoIterator<Item = (ListenerKey, SockOwner)>,
    ) -> usize {
        let Some(map) = self.ebpf.map_mut("LISTENERS") else {
            return 0;
        };
        let Ok(mut table) = aya::maps::HashMap::<_, ListenerKey, SockOwner>::try_from(map) else {
            return 0;
        };
        listeners
            .into_iter()
            .filter(|(key, owner)| table.insert(key, owner, BPF_NOEXIST).is_ok())
            .count()
    }

    /// Takes the event ring buffer out of the object (to be read through AsyncFd).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("no EVENTS map"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Detaches every program: no new events after this returns.
    pub fn detach(&mut self) {
        self.recursion_misses_at_detach = self.counters().recursion_misses;
        for (_, program) in self.ebpf.programs_mut() {
            match program {
                Program::CgroupSkb(prog) if prog.fd().is_ok() => {
                    let _ = prog.unload();
                }
                Program::BtfTracePoint(prog) if prog.fd().is_ok() => {
                    let _ = prog.unload();
                }
                _ => {}
            }
        }
    }

    /// Reads the per-CPU loss counters and each program's recursion misses.
    pub fn counters(&self) -> KernelCounters {
        let mut counters = KernelCounters {
            recursion_misses: self.recursion_misses_at_detach,
            ..KernelCounters::default()
        };
        if let Some(map) = self.ebpf.map("COUNTERS")
            && let Ok(array) = PerCpuArray::<_, u64>::try_from(map)
        {
            let sum = |index: u32| -> u64 {
                array
                    .get(&index, 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0)
            };
            counters.ringbuf_full = sum(counter::RINGBUF_FULL);
            counters.owner_table_full = sum(counter::OWNER_TABLE_FULL);
            counters.listener_table_full = sum(counter::LISTENER_TABLE_FULL);
            counters.read_failed = sum(counter::READ_FAILED);
            counters.activity_table_full = sum(counter::ACTIVITY_TABLE_FULL);
            counters.repeat_table_full = sum(counter::REPEAT_TABLE_FULL);
        }
        for (_, program) in self.ebpf.programs() {
            let fd = match program {
                Program::CgroupSkb(prog) => prog.fd().ok(),
                Program::BtfTracePoint(prog) => prog.fd().ok(),
                _ => None,
            };
            counters.recursion_misses +=
                fd.and_then(|fd| recursion_misses(fd.as_fd())).unwrap_or(0);
        }
        counters
    }
}

/// The cgroup_skb programs on the cgroup v2 root: TTLs and data of arriving segments, and
/// data of departing ones.
pub const INGRESS_PROGRAM: &str = programs::INGRESS;
pub const EGRESS_PROGRAM: &str = programs::EGRESS;

/// Attaches one verified program where its spec says.
fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup_root: &Result<PathBuf>) -> Result<()> {
    let direction = match spec.attach {
        Attach::Tracepoint(_) => {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(spec.name)
                .ok_or_else(|| anyhow!("program {} not in the object", spec.name))?
                .try_into()?;
            prog.attach()?;
            return Ok(());
        }
        Attach::CgroupIngress => CgroupSkbAttachType::Ingress,
        Attach::CgroupEgress => CgroupSkbAttachType::Egress,
    };
    let root = cgroup_root.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    attach_cgroup_skb(ebpf, spec.name, root, direction)
}

/// The verifier's complaint, trimmed to its last lines (the full log is thousands of lines).
fn verifier_message(error: &aya::programs::ProgramError) -> String {
    let text = format!("{error:#}");
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.len().saturating_sub(8);
    lines[tail..].join(" | ")
}
