//! The kernel side, seen from userspace: loading and attaching the programs (`loader`), the
//! running kernel's BTF and the offsets the programs read through, batched table reads, the
//! program table, the sweep of slots the kernel never closed (`stale`), and how flow keys are
//! shown. Nothing above this module touches aya.

pub mod attach_btf;
pub mod btf;
pub mod cgroup;
pub mod counters;
pub mod flowkey;
pub mod hz;
pub mod loader;
pub mod map_batch;
pub mod offsets;
pub mod prefetch;
pub mod privileges;
pub mod programs;
pub mod slot_query;
pub mod sockdiag;
pub mod stale;

/// The running kernel's release (`uname -r`); empty when it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_owned())
        .unwrap_or_default()
}
