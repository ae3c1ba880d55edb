//! A socket's keepalive as it will behave: its own settings or its network namespace's
//! defaults, in seconds (the kernel keeps them in jiffies).

use std::time::Duration;

use tracer_ebpf::Keepalive;

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

/// A kernel keepalive record for tests: the socket's own idle time (0: the netns default of
/// 2 h), 75 s interval and 9 probes by default, at 250 Hz.
#[cfg(test)]
pub fn sample_kernel_keepalive(enabled: bool, time_jiffies: u32) -> Keepalive {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_own_setting_or_netns_default() {
        let own = KeepaliveSettings::from_kernel(&sample_kernel_keepalive(true, 60 * 250), 250);
        assert_eq!((own.idle_s, own.interval_s, own.probes), (60.0, 75.0, 9));
        assert!(own.protects(Duration::from_secs(350)));
        let default = KeepaliveSettings::from_kernel(&sample_kernel_keepalive(true, 0), 250);
        assert_eq!(default.idle_s, 7200.0);
        assert!(
            !default.protects(Duration::from_secs(350)),
            "2 h default is too late"
        );
        assert!(
            !KeepaliveSettings::from_kernel(&sample_kernel_keepalive(false, 250), 250)
                .protects(Duration::from_secs(350))
        );
    }
}
