//! Loading and attaching the kernel programs: privilege checks, BTF offsets, the watched-port
//! set, and the loss counters the programs keep.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program},
};
use tracer_ebpf::{FlowActivity, FlowSlot, KernelOffsets, RepeatCount, RepeatKey, counter};

use crate::{
    btf::Btf,
    flowkey::FlowKeys,
    offsets,
    prefetch::Prefetch,
    programs::{self, Attach, ProgramSpec},
};

/// The kernel programs, built for the bpf target by build.rs and embedded in this binary.
static TRACER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Ring-buffer size set in the kernel program (4 MiB: its data pages are mapped twice into the
/// collector, so they count twice in its RSS); the reader is woken when an eighth of
/// it is waiting, otherwise it drains on its poll timer.
const RING_BYTES: u64 = 4 * 1024 * 1024;
const WAKEUP_BYTES: u64 = RING_BYTES / 8;

/// aya's parse of the kernel BTF, started at launch (see `start_kernel_reads`).
static AYA_BTF: Prefetch<Result<aya::Btf, aya::BtfError>> = Prefetch::new();

/// aya's loader, made at launch: `EbpfLoader::new()` parses the kernel's BTF itself (~30 ms),
/// and probing the kernel's BPF features takes ~25 ms more, most of it waiting on the kernel.
static LOADER: Prefetch<EbpfLoader<'static>> = Prefetch::new();

/// Starts parsing the kernel's BTF for aya and making its loader in the background,
/// overlapping the collector's own BTF parse.
pub fn start_kernel_reads() {
    AYA_BTF.start(aya::Btf::from_sys_fs);
    LOADER.start(|| {
        aya::features();
        EbpfLoader::new()
    });
}

/// aya's BTF: the background parse if one was started, else parsed now.
fn aya_btf() -> Result<aya::Btf> {
    AYA_BTF
        .take()
        .unwrap_or_else(aya::Btf::from_sys_fs)
        .context("reading kernel BTF")
}

/// Verification order: the costliest first, so two workers finish together.
const VERIFY_ORDER: [&str; 9] = [
    programs::CORE,
    INGRESS_PROGRAM,
    "inet_sk_error_report",
    EGRESS_PROGRAM,
    "tcp_send_reset",
    "tcp_receive_reset",
    "tcp_retransmit_skb",
    "kfree_skb",
    "tcp_retransmit_synack",
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

/// What stops the tool from running at all; printed as one line, exit status 1.
#[derive(Debug)]
pub struct FatalError(pub String);

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FatalError {}

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

/// Loaded and attached kernel programs.
pub struct Probes {
    pub ebpf: Ebpf,
    pub attached: Vec<&'static str>,
    pub missing: Vec<Missing>,
    /// How the programs' flow keys are shown (opaque numbers where they are kernel
    /// addresses; see `crate::flowkey`). Keys going in and out of this type are shown keys.
    pub flow_keys: FlowKeys,
}

impl crate::idle::ActivitySource for Probes {
    fn scan(&self, each: &mut dyn FnMut(u64, &FlowActivity)) {
        // An entry removed while the scan passes is skipped (the flow closed).
        let keys = self.flow_keys;
        self.scan_hash::<u64, FlowActivity>("ACTIVITY", &mut |cookie, record| {
            each(keys.shown(*cookie), record)
        });
    }

    fn slot(&self, cookie: u64) -> Option<FlowSlot> {
        let map = self.ebpf.map("FLOWS")?;
        let slots = aya::maps::HashMap::<_, u64, FlowSlot>::try_from(map).ok()?;
        slots.get(&self.flow_keys.kernel(cookie), 0).ok()
    }
}

impl crate::repeats::RepeatSource for Probes {
    fn repeats(&self, each: &mut dyn FnMut(&RepeatKey, &RepeatCount)) {
        self.scan_hash("REPEATS", each);
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

/// Loss and overflow counts summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_full: u64,
    pub owner_table_full: u64,
    pub listener_table_full: u64,
    pub read_failed: u64,
    pub activity_table_full: u64,
    /// Repeats sent in full because the repeat table was full (nothing lost).
    pub repeat_table_full: u64,
    /// Runs the kernel skipped because a program was already running on that CPU.
    pub recursion_misses: u64,
}

impl KernelCounters {
    /// Counters in `losses` that are warned about but lose nothing (not `lost` metrics).
    pub const NOTHING_LOST: [&'static str; 1] = ["repeat_table_full"];

    /// Each loss counter: its `reason` label in the metrics, its value, and what a rise means
    /// (warned about as it happens; None: counted only).
    pub fn losses(&self) -> [(&'static str, u64, Option<&'static str>); 7] {
        [
            (
                "ringbuf_full",
                self.ringbuf_full,
                Some("events lost: the ring buffer was full (counted in the stats line)"),
            ),
            (
                "owner_table_full",
                self.owner_table_full,
                Some(
                    "flows lost process attribution and are reported event by event: flow table \
                     full (--max-flows)",
                ),
            ),
            (
                "listener_table_full",
                self.listener_table_full,
                Some(
                    "listeners not remembered: listener table full (accepted sockets lose \
                     attribution)",
                ),
            ),
            (
                "activity_table_full",
                self.activity_table_full,
                Some("flows not idle-tracked: activity table full (--max-flows)"),
            ),
            (
                "repeat_table_full",
                self.repeat_table_full,
                Some(
                    "repeated refusals or RSTs sent one by one instead of counted: repeat table \
                     full (nothing lost)",
                ),
            ),
            ("read_failed", self.read_failed, None),
            (
                "recursion_misses",
                self.recursion_misses,
                Some("kernel program runs skipped by the kernel (recursion on a CPU)"),
            ),
        ]
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

impl Probes {
    /// Loads the programs with offsets from `btf`, fills the watched-port set, and attaches
    /// every tracepoint this kernel has. Tracepoints it lacks are reported in `missing`.
    pub fn load(
        btf: &Btf,
        ports: &[u16],
        max_flows: u32,
        idle_mark_ns: u64,
        repeat_window_ns: u64,
        host_root: &Path,
    ) -> Result<Self> {
        raise_memlock_limit();
        let offsets = offsets::resolve(btf)?;
        tracing::debug!("kernel offsets from BTF: {offsets:?}");
        // aya's parse of the kernel's BTF (tp_btf attach targets), made at launch.
        let started = std::time::Instant::now();
        let aya_btf = aya_btf()?;
        tracing::debug!("kernel BTF for aya ready after {:?}", started.elapsed());
        let mut loader = LOADER.take().unwrap_or_default();
        let mut ebpf = loader
            // The object has no CO-RE relocations: the loader needs no BTF of its own.
            .btf(None)
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKEUP_BYTES", &WAKEUP_BYTES, true)
            .override_global("IDLE_MARK_NS", &idle_mark_ns, true)
            .override_global("REPEAT_WINDOW_NS", &repeat_window_ns, true)
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

        let mut verified = verify_all(&mut ebpf, btf, &aya_btf, &offsets);
        let root = cgroup2_root(host_root);
        let mut attached = Vec::new();
        let mut missing = Vec::new();
        for spec in &programs::PROGRAMS {
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
                kernel_release(),
                core.tracepoint,
                core.reason,
                programs::OLDEST_KERNEL
            ))
            .into());
        }
        Ok(Self {
            ebpf,
            attached,
            missing,
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
            match crate::map_batch::for_each(data, each) {
                Ok(()) => return,
                Err(crate::map_batch::BatchError::Unsupported) => {}
                Err(crate::map_batch::BatchError::Io(error)) => {
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
        let mut counters = KernelCounters::default();
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

/// The running kernel's release (`uname -r`), for messages.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_else(|_| "unknown release".to_owned())
}

/// The mount point of the cgroup v2 hierarchy, from a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        // Only a mount of the hierarchy's root covers every socket on the host.
        (root == "/").then(|| PathBuf::from(point.replace("\\040", " ")))
    })
}

/// Finds the cgroup v2 root, or mounts one (hosts with only v1 mounted still have v2). In a
/// container (`--host-root` other than `/`), the host's root is reached through the host's
/// pid 1 (`<host-root>/proc/1/root/...`): the container's own cgroup mount may show only its
/// cgroup namespace, and programs attached there would miss the rest of the node.
fn cgroup2_root(host_root: &Path) -> Result<PathBuf> {
    if host_root != Path::new("/")
        && let Ok(mountinfo) = std::fs::read_to_string(host_root.join("proc/1/mountinfo"))
        && let Some(path) = cgroup2_mount(&mountinfo)
    {
        let on_host = host_root
            .join("proc/1/root")
            .join(path.strip_prefix("/").unwrap_or(&path));
        if on_host.is_dir() {
            return Ok(on_host);
        }
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(path) = cgroup2_mount(&mountinfo) {
        return Ok(path);
    }
    let path = Path::new("/run/shuffletrace/cgroup2");
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "no cgroup v2 hierarchy is mounted and mounting one at {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(path.to_path_buf())
}

fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program: &str,
    root: &Path,
    direction: CgroupSkbAttachType,
) -> Result<()> {
    let cgroup =
        std::fs::File::open(root).with_context(|| format!("opening cgroup {}", root.display()))?;
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} not in the object"))?
        .try_into()?;
    // Attached through a BPF link (kernels >= 5.7), which takes no flags and always runs beside
    // other programs on the same cgroup; "Single" is aya's flag-less mode.
    prog.attach(&cgroup, direction, CgroupAttachMode::Single)
        .with_context(|| format!("attaching to cgroup {}", root.display()))?;
    Ok(())
}

/// `recursion_misses` of a loaded program, from its fdinfo (aya does not expose it).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    parse_fdinfo_field(&info, "recursion_misses")
}

/// A numeric `name:\tvalue` line of a fdinfo file.
pub fn parse_fdinfo_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// The verifier's complaint, trimmed to its last lines (the full log is thousands of lines).
fn verifier_message(error: &aya::programs::ProgramError) -> String {
    let text = format!("{error:#}");
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines.len().saturating_sub(8);
    lines[tail..].join(" | ")
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

    #[test]
    fn cgroup2_root_found_in_mountinfo() {
        let hybrid = "30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let container = "40 30 0:27 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(container), None, "a sub-tree is not the root");
        assert_eq!(
            cgroup2_mount("32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn counters_that_lose_nothing_are_named_among_the_losses() {
        let names: Vec<&str> = KernelCounters::default()
            .losses()
            .iter()
            .map(|(name, _, _)| *name)
            .collect();
        for name in KernelCounters::NOTHING_LOST {
            assert!(names.contains(&name), "{name}");
        }
    }

    #[test]
    fn fdinfo_fields() {
        let info = "prog_type:\t26\nrun_time_ns:\t0\nrecursion_misses:\t7\nverified_insns:\t100\n";
        assert_eq!(parse_fdinfo_field(info, "recursion_misses"), Some(7));
        assert_eq!(parse_fdinfo_field(info, "missing"), None);
    }
}
