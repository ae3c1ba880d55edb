//! Maps, read-only globals and kernel constants every program shares: one object, one set of
//! tables. Userspace sizes the tables and fills the globals before load (see the collector's
//! kernel loader).

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf};
use tracer_ebpf::{
    FlowActivity, FlowSlot, KernelOffsets, ListenerKey, RepeatCount, RepeatKey, SockOwner, counter,
};
pub(crate) const BPF_RB_NO_WAKEUP: u64 = 1;

pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = 2;

pub(crate) const BPF_RB_AVAIL_DATA: u64 = 0;

pub(crate) const BPF_NOEXIST: u64 = 1;

pub(crate) const IPPROTO_TCP: u16 = 6;

/// Field offsets from the running kernel's BTF; written by userspace before load (rodata, so
/// the verifier sees constants and prunes branches for features this kernel lacks).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Unread bytes in the ring buffer at which a submit wakes the reader. Below it records are
/// submitted without a wakeup (a wakeup per event costs ~9 µs) and userspace polls on a timer.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: u64 = 0;

/// A data segment after at least this long without data either way ends an idle period,
/// whose length is recorded (half the NAT idle threshold; set by userspace).
#[unsafe(no_mangle)]
pub(crate) static IDLE_MARK_NS: u64 = 0;

/// Window of the repeat table (see `tracer_ebpf::RepeatKey`): userspace's aggregation window
/// (0: every occurrence is sent).
#[unsafe(no_mangle)]
pub(crate) static REPEAT_WINDOW_NS: u64 = 0;

/// Test hook (see the collector's kernel loader): non-zero, the state program ignores every
/// CLOSE, as the kernel skips a run that would recurse; 2, the destroy program ignores every
/// socket too, as the kernel has been seen to skip all of a socket's last runs without
/// counting a miss (see the collector's `kernel::stale`); 3, the state program also ignores
/// every change after a flow is established (its slot stays as it was then). 0 in use: the
/// checks are pruned.
#[unsafe(no_mangle)]
pub(crate) static TEST_SKIP_CLOSE: u32 = 0;

/// Bench hook (`cargo xtask bench`'s "hooks" column, see the collector's kernel loader):
/// non-zero, every program returns as soon as it runs, so a load measures what the hooks
/// themselves cost (the kernel calling nine programs), the floor of this design. 0 in use:
/// the checks are pruned.
#[unsafe(no_mangle)]
pub(crate) static BENCH_HOOKS_ONLY: u32 = 0;

/// Non-zero when tracing is restricted to the network namespaces in `NETNS_FILTER`
/// (`--netns`); 0: every namespace is watched.
#[unsafe(no_mangle)]
pub(crate) static FILTER_NETNS: u32 = 0;

/// The network namespaces watched when `FILTER_NETNS` is set: inode -> 1. Filled by userspace
/// before the programs attach, never written by them.
#[map]
pub(crate) static NETNS_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(MAX_NETNS_FILTER, 0);

/// The most namespaces `--netns` may name (userspace checks the same bound).
pub(crate) const MAX_NETNS_FILTER: u32 = 64;

/// The watched-port set: index = port, non-zero = watched. An array lookup is the cheapest
/// check for unwatched traffic and holds any mix of single ports and ranges.
#[map]
pub(crate) static WATCHED_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Socket cookie -> the flow's owner and quiet-flow record (see `tracer_ebpf::FlowSlot`).
/// Inserted at connect()/accept, removed at TCP_CLOSE. Bounded; a full table is counted
/// (OWNER_TABLE_FULL) and such flows are sent event by event. Userspace sizes it at load.
#[map]
pub(crate) static FLOWS: HashMap<u64, FlowSlot> = HashMap::with_max_entries(131072, 0);

/// (netns, port) of a watched listener -> the process that called listen(): attribution for
/// sockets it accepts, which are created in softirq context.
#[map]
pub(crate) static LISTENERS: HashMap<ListenerKey, SockOwner> = HashMap::with_max_entries(8192, 0);

/// Remote address (see `peer_key`) -> TTL / hop limit its non-RST segments arrive with. A
/// cache: LRU-bounded, an evicted peer only means "TTL unknown" for its next RST.
#[map]
pub(crate) static PEER_TTL: LruHashMap<[u8; 16], u8> = LruHashMap::with_max_entries(16384, 0);

/// The TTL of the RST that just arrived for a socket, written by the ingress program and read
/// by `tcp_receive_reset` a moment later (see `marks`). Direct-mapped, bounded by its size.
#[map]
pub(crate) static RST_TTL: Array<u64> = Array::with_max_entries(MARK_SLOTS, 0);

/// Socket cookie -> activity of a watched flow (idle tracking, payload classes). Inserted by
/// the cgroup_skb programs at the flow's first data segment, removed at TCP_CLOSE.
/// Bounded like FLOWS; a full table is counted (ACTIVITY_TABLE_FULL).
#[map]
pub(crate) static ACTIVITY: HashMap<u64, FlowActivity> = HashMap::with_max_entries(131072, 0);

/// How many `ACTIVITY` entries each slot of cookies may have (index: `hint_index`), counted
/// up before an entry is inserted and down once one is removed: 0 means the flow has none,
/// so a segment without data of a flow that never carried any (a short connection's
/// handshake, FINs and ACKs) and its close skip the lookup in the large `ACTIVITY` table, a
/// cache miss each. Small enough to stay in cache; a non-zero count only means "look".
#[map]
pub(crate) static ACTIVITY_HINT: Array<u32> = Array::with_max_entries(ACTIVITY_HINT_SLOTS, 0);

/// Slots of `ACTIVITY_HINT` (a power of two).
pub(crate) const ACTIVITY_HINT_SLOTS: u32 = 16384;

/// One u64 per CPU through which a socket's address becomes a plain number (see
/// `sock::address_key`).
#[map]
pub(crate) static KEY_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One `FlowSlot` per CPU, where a new flow's slot is built before it is inserted (see
/// `ACTIVITY_SCRATCH`).
#[map]
pub(crate) static SLOT_SCRATCH: PerCpuArray<FlowSlot> = PerCpuArray::with_max_entries(1, 0);

/// One `FlowActivity` per CPU, where a new entry is built before it is inserted: the
/// programs' stack (512 bytes across calls) has no room for it.
#[map]
pub(crate) static ACTIVITY_SCRATCH: PerCpuArray<FlowActivity> = PerCpuArray::with_max_entries(1, 0);

/// Repeated refusals and RSTs without a socket, counted instead of sent (see
/// `tracer_ebpf::RepeatKey`). Bounded; when full, occurrences are sent in full and counted
/// (REPEAT_TABLE_FULL). Entries are removed by userspace once their window is over.
#[map]
pub(crate) static REPEATS: HashMap<RepeatKey, RepeatCount> = HashMap::with_max_entries(4096, 0);

/// How many refused connects counted as repeats (`slot::COUNTED`) each slot of cookies has
/// in `FLOWS` (see `hints`): their slots outlive the CLOSE until the socket is destroyed, by
/// when TCP has cleared the ports the destroy program finds watched flows by, so it finds
/// these by the hint instead. A socket connect()ed again after its refusal leaves its count
/// behind (its slot is overwritten): one lookup more for sockets of that slot, nothing else.
#[map]
pub(crate) static COUNTED_HINT: Array<u32> = Array::with_max_entries(COUNTED_HINT_SLOTS, 0);

/// Slots of `COUNTED_HINT` (a power of two).
pub(crate) const COUNTED_HINT_SLOTS: u32 = 4096;

/// Slots of the direct-mapped mark table (a power of two).
pub(crate) const MARK_SLOTS: u32 = 4096;

/// Per-CPU loss and overflow counters, indexed by `tracer_ebpf::counter`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading our own read-only global.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) } as usize
    };
}
pub(crate) use offset;

/// Adds one to a per-CPU counter.
#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot of a per-CPU array.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn is_watched(port: u16) -> bool {
    matches!(WATCHED_PORTS.get(port as u32), Some(v) if *v != 0)
}

/// Whether events of a network namespace are sent (see `FILTER_NETNS`).
#[inline(always)]
pub(crate) fn netns_watched(netns: u32) -> bool {
    // SAFETY: reading our own read-only global.
    let filtered = unsafe { core::ptr::read_volatile(&raw const FILTER_NETNS) } != 0;
    // SAFETY: the value is not kept.
    !filtered || unsafe { NETNS_FILTER.get(&netns) }.is_some()
}

/// Whether the programs may run: the offsets were filled in, and this is not the bench's
/// hooks-only run (see `BENCH_HOOKS_ONLY`).
#[inline(always)]
pub(crate) fn ready() -> bool {
    offset!(ready) != 0 && !hooks_only()
}

/// The bench's hooks-only run (see `BENCH_HOOKS_ONLY`).
#[inline(always)]
pub(crate) fn hooks_only() -> bool {
    // SAFETY: reading our own read-only global.
    let hooks_only = unsafe { core::ptr::read_volatile(&raw const BENCH_HOOKS_ONLY) };
    hooks_only != 0
}
