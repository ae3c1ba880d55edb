//! Kernel timestamps (CLOCK_BOOTTIME) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts CLOCK_BOOTTIME nanoseconds to wall time, using the offset measured at start.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// Wall-clock nanoseconds at boot (realtime - boottime).
    boot_epoch_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn new() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            boot_epoch_ns: real - boot,
        }
    }

    /// A clock whose boot happened at `boot_epoch_ns` wall-clock nanoseconds (tests).
    #[cfg(test)]
    pub fn with_boot_epoch_ns(boot_epoch_ns: i128) -> Self {
        Self { boot_epoch_ns }
    }

    /// CLOCK_BOOTTIME now.
    pub fn now_boot_ns() -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME) as u64
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (self.boot_epoch_ns + i128::from(boot_ns)).max(0) as u128;
        UNIX_EPOCH + Duration::new((ns / 1_000_000_000) as u64, (ns % 1_000_000_000) as u32)
    }

    /// RFC 3339, UTC, nanoseconds: `2026-11-22T22:41:05.123456789Z`.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.wall(boot_ns)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        let clock = BootClock::with_boot_epoch_ns(1_795_000_000_000_000_000);
        assert_eq!(clock.rfc3339(123), "2026-11-18T11:06:40.000000123Z");
    }
}
