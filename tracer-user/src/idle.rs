//! Idle tracking against NAT idle timeouts: the threshold in force, a socket's effective
//! keepalive, and the check of a flow's activity.
//!
//! Why this is cheap: the kernel records the last segment of each watched flow that carries
//! data in the `ACTIVITY` map as packets pass (cgroup_skb, watched ports only), with the
//! flow's tuple; a flow that carries data cleanly is never sent to userspace at all. The
//! collector scans that map every tenth of the threshold (`scan_interval_ns`) and reports
//! the flows idle past 80% of it: no per-flow state in userspace, whatever the number of
//! flows, and no event per flow.

use std::{io::Read as _, time::Duration};

use tracer_ebpf::{FlowActivity, FlowSlot, Keepalive};

use crate::cli::UsageError;

/// The NAT idle timeout to check flows against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatIdle {
    pub threshold: Duration,
    /// `aws`, `azure`, `gcp`, or `custom`.
    pub profile: &'static str,
}

impl NatIdle {
    /// `aws` (350 s, AWS NAT gateway), `azure` (4 min, Azure NAT gateway default), `gcp`
    /// (1200 s, Cloud NAT established idle), or a duration like `4s`.
    pub fn parse(text: &str) -> Result<Self, UsageError> {
        let (threshold, profile) = match text.trim().to_ascii_lowercase().as_str() {
            "aws" => (Duration::from_secs(350), "aws"),
            "azure" => (Duration::from_secs(240), "azure"),
            "gcp" => (Duration::from_secs(1200), "gcp"),
            other => match humantime::parse_duration(other) {
                Ok(d) if d >= Duration::from_millis(100) => (d, "custom"),
                Ok(_) => {
                    return Err(UsageError(format!(
                        "invalid --nat-idle {text:?}: must be at least 100ms"
                    )));
                }
                Err(e) => {
                    return Err(UsageError(format!(
                        "invalid --nat-idle {text:?}: {e} (use aws, azure, gcp or a duration \
                         like 350s)"
                    )));
                }
            },
        };
        Ok(Self { threshold, profile })
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold.as_nanos() as u64
    }
}

impl std::fmt::Display for NatIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            humantime::format_duration(self.threshold),
            self.profile
        )
    }
}

/// A socket's keepalive as it will behave: its own setting or its netns default, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeepaliveSettings {
    pub enabled: bool,
    pub idle_s: f64,
    pub interval_s: f64,
    pub probes: u32,
}

impl KeepaliveSettings {
    pub fn from_kernel(raw: &Keepalive, hz: u32) -> Self {
        let hz = f64::from(hz.max(1));
        let pick = |own: u32, netns: u32| f64::from(if own != 0 { own } else { netns }) / hz;
        Self {
            enabled: raw.enabled != 0,
            idle_s: pick(raw.time, raw.netns_time),
            interval_s: pick(raw.intvl, raw.netns_intvl),
            probes: u32::from(if raw.probes != 0 {
                raw.probes
            } else {
                raw.netns_probes
            }),
        }
    }

    /// Keepalive sends a probe before the flow has been idle for `threshold`: the NAT keeps it.
    pub fn protects(&self, threshold: Duration) -> bool {
        self.enabled && self.idle_s > 0.0 && self.idle_s < threshold.as_secs_f64()
    }
}

/// Reads the kernel's idle-tracking records; implemented over the kernel maps.
pub trait ActivitySource {
    /// Calls `each` with every flow the kernel tracks activity for.
    fn scan(&self, each: &mut dyn FnMut(u64, &FlowActivity));
    /// The kernel's slot of a flow (owner, recorded state changes), if it has one.
    fn slot(&self, cookie: u64) -> Option<FlowSlot>;
}

/// How often the kernel's activity table is scanned: a tenth of the threshold (so a flow is
/// reported between 80% and 90% of it), at least every 100 ms and at most every 30 s.
pub fn scan_interval_ns(nat: &NatIdle) -> u64 {
    (nat.threshold_ns() / 10).clamp(100_000_000, 30_000_000_000)
}

/// The outcome of one scheduled check.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Not idle long enough yet; check again at this time.
    Later(u64),
    /// Idle (no segment either way) for `idle_ns` with keepalive that will not save it:
    /// report (once per idle period, keyed by `last_data_ns`, the time of the last segment),
    /// then check again at the time given.
    AtRisk {
        idle_ns: u64,
        last_data_ns: u64,
        keepalive: KeepaliveSettings,
        next: u64,
    },
    /// The flow is idle but protected, or already reported for this idle period.
    Quiet(u64),
}

/// Decides what a due check finds. `reported_for` is the last-data time of the idle period
/// already reported for this flow, if any.
pub fn check(
    activity: &FlowActivity,
    now_ns: u64,
    nat: &NatIdle,
    hz: u32,
    reported_for: Option<u64>,
) -> Check {
    let threshold = nat.threshold_ns();
    let warn_at = threshold / 5 * 4;
    // What a NAT counts: any segment either way (a peer's keepalive probes protect too).
    let last_data = activity
        .last_packet_ns
        .max(activity.last_rx_ns)
        .max(activity.last_tx_ns);
    let idle = now_ns.saturating_sub(last_data);
    if idle < warn_at {
        return Check::Later(last_data + warn_at);
    }
    let next = now_ns + (threshold / 5).max(100_000_000);
    let keepalive = KeepaliveSettings::from_kernel(&activity.keepalive, hz);
    if reported_for == Some(last_data) || keepalive.protects(nat.threshold) {
        return Check::Quiet(next);
    }
    Check::AtRisk {
        idle_ns: idle,
        last_data_ns: last_data,
        keepalive,
        next,
    }
}

/// The kernel's tick rate, to turn the jiffies of keepalive settings into seconds: from the
/// kernel config (/proc/config.gz, /boot/config-RELEASE), else measured from /proc/timer_list.
pub fn kernel_hz(release: &str) -> Result<(u32, &'static str), String> {
    let from_config = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("CONFIG_HZ="))
            .and_then(|value| value.trim().parse::<u32>().ok())
    };
    if let Ok(file) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .is_ok()
            && let Some(hz) = from_config(&text)
        {
            return Ok((hz, "/proc/config.gz"));
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/boot/config-{release}"))
        && let Some(hz) = from_config(&text)
    {
        return Ok((hz, "/boot/config"));
    }
    measure_hz().map(|hz| (hz, "/proc/timer_list"))
}

fn timer_list_jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix("jiffies: ")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Counts jiffies over 200 ms and rounds to the nearest standard tick rate.
fn measure_hz() -> Result<u32, String> {
    let start = std::time::Instant::now();
    let first = timer_list_jiffies().ok_or("no jiffies in /proc/timer_list")?;
    std::thread::sleep(Duration::from_millis(200));
    let second = timer_list_jiffies().ok_or("no jiffies in /proc/timer_list")?;
    let rate = (second - first) as f64 / start.elapsed().as_secs_f64();
    [100u32, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
        .ok_or_else(|| "no tick rate".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn activity(last_ns: u64, keepalive: Keepalive) -> FlowActivity {
        FlowActivity {
            last_rx_ns: last_ns,
            last_tx_ns: last_ns / 2,
            keepalive,
            ..Default::default()
        }
    }

    fn keepalive(enabled: bool, time_jiffies: u32) -> Keepalive {
        Keepalive {
            time: time_jiffies,
            intvl: 0,
            netns_time: 7200 * 250,
            netns_intvl: 75 * 250,
            probes: 0,
            netns_probes: 9,
            enabled: u8::from(enabled),
            _pad: 0,
        }
    }

    #[test]
    fn profiles_and_durations() {
        assert_eq!(
            NatIdle::parse("aws").unwrap().threshold,
            Duration::from_secs(350)
        );
        assert_eq!(
            NatIdle::parse("Azure").unwrap().threshold,
            Duration::from_secs(240)
        );
        assert_eq!(
            NatIdle::parse("gcp").unwrap().threshold,
            Duration::from_secs(1200)
        );
        let custom = NatIdle::parse("4s").unwrap();
        assert_eq!(
            (custom.threshold, custom.profile),
            (Duration::from_secs(4), "custom")
        );
        assert!(
            NatIdle::parse("soon")
                .unwrap_err()
                .0
                .contains("aws, azure, gcp")
        );
        assert!(NatIdle::parse("1ms").is_err());
    }

    #[test]
    fn keepalive_own_setting_or_netns_default() {
        let own = KeepaliveSettings::from_kernel(&keepalive(true, 60 * 250), 250);
        assert_eq!((own.idle_s, own.interval_s, own.probes), (60.0, 75.0, 9));
        assert!(own.protects(Duration::from_secs(350)));
        let default = KeepaliveSettings::from_kernel(&keepalive(true, 0), 250);
        assert_eq!(default.idle_s, 7200.0);
        assert!(
            !default.protects(Duration::from_secs(350)),
            "2 h default is too late"
        );
        assert!(
            !KeepaliveSettings::from_kernel(&keepalive(false, 250), 250)
                .protects(Duration::from_secs(350))
        );
    }

    #[test]
    fn warns_at_eighty_percent_once_per_idle_period() {
        let nat = NatIdle::parse("10s").unwrap();
        let a = activity(100 * SEC, keepalive(false, 0));
        assert_eq!(
            check(&a, 105 * SEC, &nat, 250, None),
            Check::Later(108 * SEC)
        );
        let Check::AtRisk {
            idle_ns,
            last_data_ns,
            next,
            ..
        } = check(&a, 108 * SEC, &nat, 250, None)
        else {
            panic!("at risk")
        };
        assert_eq!(
            (idle_ns, last_data_ns, next),
            (8 * SEC, 100 * SEC, 110 * SEC)
        );
        assert_eq!(
            check(&a, 110 * SEC, &nat, 250, Some(100 * SEC)),
            Check::Quiet(112 * SEC)
        );
        // A new idle period is a new warning.
        let later = activity(200 * SEC, keepalive(false, 0));
        assert!(matches!(
            check(&later, 209 * SEC, &nat, 250, Some(100 * SEC)),
            Check::AtRisk { .. }
        ));
    }

    #[test]
    fn keepalive_below_the_threshold_protects() {
        let nat = NatIdle::parse("10s").unwrap();
        let a = activity(100 * SEC, keepalive(true, 250));
        assert!(matches!(
            check(&a, 109 * SEC, &nat, 250, None),
            Check::Quiet(_)
        ));
    }
}
