//! The programs' loss and overflow counters, and the runs the kernel skipped
//! (`recursion_misses`, from each program's fdinfo): what the stats line, the warnings and the
//! metrics say was lost.

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

/// `recursion_misses` of a loaded program, from its fdinfo (aya does not expose it).
pub fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
