//! The kernel's tick rate: keepalive settings are kept in jiffies, and turning them into
//! seconds needs it. A fact about the running kernel, read once at start.

use std::{io::Read as _, time::Duration};

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
