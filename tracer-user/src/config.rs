//! Validated configuration every stage takes: thresholds, the NAT idle profile, output
//! formats and port lists. No clap types here: `cli` turns the command line into these, and
//! the stages never see where a setting came from.

use std::time::Duration;

use crate::error::UsageError;
#[cfg(test)]
use crate::services::DEFAULT_PORTS;

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

/// How events become findings: the thresholds of each verdict.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// `retransmit_storm`: at least this many retransmits of an established flow ...
    pub storm_retransmits: u32,
    /// ... within this window.
    pub storm_window_ns: u64,
    /// `return_path_blocked`: SYN-ACK retransmits of one request without the final ACK.
    pub synack_retransmits: u32,
    /// Identical findings within this window are folded into one line with a count.
    pub aggregate_window_ns: u64,
    /// The NAT idle timeout flows are checked against.
    pub nat_idle: NatIdle,
}

/// Output format of `run` and `probe`: readable text, or NDJSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Output format of `report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Markdown,
    Json,
    /// One self-contained page: inline CSS and SVG, no scripts, no external assets.
    Html,
}

/// Parses a watched-port list: comma-separated ports and `low-high` ranges, 1..=65535.
/// Returns the sorted, de-duplicated ports.
pub fn parse_ports(list: &str) -> Result<Vec<u16>, UsageError> {
    let bad = |token: &str, why: &str| {
        // The entry, not the list: a list can hold tens of thousands of entries.
        let at = list
            .split(',')
            .position(|entry| std::ptr::eq(entry.as_ptr(), token.as_ptr()))
            .map(|index| format!(" (entry {})", index + 1))
            .unwrap_or_default();
        UsageError(format!(
            "invalid --ports list: {:?}{at} {why} (expected ports 1-65535 or ranges like \
             10000-10001, comma separated)",
            shorten(token)
        ))
    };
    if list.trim().is_empty() {
        return Err(bad("", "is empty"));
    }
    let port = |token: &str| -> Result<u16, UsageError> {
        match token.trim().parse::<u32>() {
            Ok(0) => Err(bad(token, "is not a port: port 0 cannot be watched")),
            Ok(n) if n > 65535 => Err(bad(token, "is out of range")),
            Ok(n) => Ok(n as u16),
            Err(_) => Err(bad(token, "is not a port number")),
        }
    };
    let mut ports = Vec::new();
    for token in list.split(',') {
        if token.trim().is_empty() {
            return Err(bad(token, "is an empty entry"));
        }
        match token.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (port(low)?, port(high)?);
                if low > high {
                    return Err(bad(token, "is a range whose start is above its end"));
                }
                ports.extend(low..=high);
            }
            None => ports.push(port(token)?),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// At most 40 characters of a user's value, for an error message.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Parses `--duration`: `30s`, `5m`, `1h`, `1h30m`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, UsageError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(UsageError(format!(
            "invalid --duration {text:?}: must be longer than zero"
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(UsageError(format!(
            "invalid --duration {text:?}: {e} (examples: 30s, 5m, 1h)"
        ))),
    }
}

/// Compact rendering of a sorted port list, ranges folded: `443,4040,7337,10000-10001`.
pub fn format_ports(ports: &[u16]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let start = ports[i];
        let mut end = start;
        while i + 1 < ports.len() && ports[i + 1] == end + 1 {
            i += 1;
            end = ports[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn default_ports_are_the_seed_table() {
        assert_eq!(
            parse_ports(DEFAULT_PORTS).unwrap(),
            vec![443, 4040, 7337, 8443, 9083, 10000, 10001]
        );
    }

    #[test]
    fn ranges_expand_and_duplicates_fold() {
        assert_eq!(
            parse_ports("7337, 10000-10002,7337").unwrap(),
            vec![7337, 10000, 10001, 10002]
        );
        assert_eq!(
            format_ports(&[443, 7337, 10000, 10001, 10002]),
            "443,7337,10000-10002"
        );
    }

    #[test]
    fn bad_tokens_are_named() {
        for (list, token) in [
            ("0", "\"0\""),
            ("70000", "\"70000\""),
            ("7337,abc", "\"abc\""),
            ("7337,,10000", "\"\""),
            ("10001-10000", "\"10001-10000\""),
            ("", "\"\""),
            ("7337-", "\"\""),
        ] {
            let err = parse_ports(list).unwrap_err().0;
            assert!(err.contains(token), "{list}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_bad_entry_in_a_long_list_is_named_alone() {
        let mut list: Vec<String> = (1..=20_000).map(|p| p.to_string()).collect();
        list.push("x".repeat(500));
        let err = parse_ports(&list.join(",")).unwrap_err().0;
        assert!(err.len() < 250, "{} characters: {err}", err.len());
        assert!(err.contains("entry 20001"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
