//! `--since`/`--until`: an RFC 3339 time or a duration ago, checked against what a trace can
//! hold (1970 to 9999) before it is formatted: humantime panics on a time before the epoch and
//! `SystemTime - Duration` on an overflow, so `--since 60y` used to crash the report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::UsageError;

/// What `--since`/`--until` accept, for the error messages.
const ACCEPTED: &str = "use an RFC 3339 time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z \
                        (2026-11-22T10:00:00Z) or a duration ago back to 1970 (2h, 7days)";

/// The report's window as RFC 3339 strings with nanoseconds (trace lines compare as text).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Window {
    pub fn holds(&self, ts: &str) -> bool {
        self.since.as_deref().is_none_or(|s| ts >= s)
            && self.until.as_deref().is_none_or(|u| ts <= u)
    }
}

/// A time, or `None` when it lies before 1970 (a duration reaching back past the epoch).
fn parse(flag: &str, text: &str, now: SystemTime) -> Result<Option<SystemTime>, UsageError> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text.trim()) {
        return Ok(Some(time));
    }
    match humantime::parse_duration(text.trim()) {
        Ok(ago) => Ok(now.checked_sub(ago).filter(|t| *t >= UNIX_EPOCH)),
        Err(_) => Err(UsageError(format!("invalid {flag} {text:?}: {ACCEPTED}"))),
    }
}

/// Parses both flags. A `--since` before 1970 means everything (no lower bound); an
/// `--until` before 1970, or a `--since` after the `--until`, could match nothing: an error.
pub fn window(
    since: Option<&str>,
    until: Option<&str>,
    now: SystemTime,
) -> Result<Window, UsageError> {
    let format = |t: SystemTime| humantime::format_rfc3339_nanos(t).to_string();
    let since_time = match since {
        Some(text) => parse("--since", text, now)?,
        None => None,
    };
    let until_time = match until {
        Some(text) => match parse("--until", text, now)? {
            Some(time) => Some(time),
            None => {
                let days = now
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_secs()
                    / 86_400;
                return Err(UsageError(format!(
                    "invalid --until {text:?}: that is before 1970-01-01T00:00:00Z, so no trace \
                     line can match (a duration ago can be at most {days}days); {ACCEPTED}"
                )));
            }
        },
        None => None,
    };
    if let (Some(s), Some(u)) = (since_time, until_time)
        && s > u
    {
        return Err(UsageError(format!(
            "--since {} is after --until {}: the window is empty",
            format(s),
            format(u)
        )));
    }
    Ok(Window {
        since: since_time.map(format),
        until: until_time.map(format),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_times_are_clamped_or_refused() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000); // 2026-11-18
        let w = |s: Option<&str>, u: Option<&str>| window(s, u, now);
        assert_eq!(w(Some("60y"), None).unwrap(), Window::default());
        assert_eq!(
            w(Some("18446744073709551615s"), None).unwrap(),
            Window::default()
        );
        assert_eq!(
            w(Some("1h"), None).unwrap().since.as_deref(),
            Some("2026-11-18T10:06:40.000000000Z")
        );
        for until in ["100y", "18446744073709551615s"] {
            let error = w(None, Some(until)).unwrap_err().0;
            assert!(error.contains(&format!("--until {until:?}")), "{error}");
            assert!(error.contains("at most 20775days"), "{error}");
        }
        let error = w(None, Some("1960-01-01T00:00:00Z")).unwrap_err().0;
        assert!(
            error.contains("from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"),
            "{error}"
        );
        assert!(w(Some("99999999999999999999s"), None).is_err());
        let error = w(Some("1h"), Some("2h")).unwrap_err().0;
        assert!(error.contains("is after --until"), "{error}");
    }
}
