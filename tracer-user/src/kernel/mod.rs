//! The kernel side, seen from userspace: loading and attaching the programs (`loader`), the
//! running kernel's BTF and the offsets the programs read through, batched table reads, the
//! program table, and how flow keys are shown. Nothing above this module touches aya.

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
