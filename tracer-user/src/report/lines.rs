//! Lines of a trace file with a bounded length: `BufRead::read_line` buffers a line whole
//! (a 64 MiB "line", or `/dev/zero`, is held in memory or aborts the allocation), so a line
//! longer than `MAX_LINE` is read through and reported as too long instead, and bytes are
//! checked for UTF-8 only once a line is complete (a bad line, not a failed read).

use std::io::{self, BufRead};

/// The longest line `report` reads: 1 MiB. The longest lines shuffletrace writes are a
/// `stats` line with all 4096 per-port rows of `clean_flows_by_port` (about 100 bytes each,
/// under 0.5 MiB) and a `start` line watching all 65535 ports (6 bytes each, under 0.4 MiB);
/// findings carry at most 16 evidence events (a few KiB).
pub const MAX_LINE: usize = 1 << 20;

/// What one line was.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Its text, without the newline; `complete` is false for a last line with no newline.
    Text { text: &'a str, complete: bool },
    /// Longer than `MAX_LINE` (read through, not kept).
    TooLong,
    /// Not UTF-8: the offset of the first bad byte.
    NotUtf8(usize),
}

pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// The number of the last line returned (1-based).
    pub number: u64,
    /// A read error met after a partial line: returned on the next call, after that line.
    pending: Option<io::Error>,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            number: 0,
            pending: None,
        }
    }

    /// The next line, `None` at the end. A read error ends the input: the partial line
    /// before it (if any) comes first, as an incomplete line, then the error.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        self.buf.clear();
        let (mut too_long, mut started) = (false, false);
        let complete = loop {
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if started => {
                    self.pending = Some(e);
                    break false;
                }
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if !started {
                    return Ok(None);
                }
                break false;
            }
            started = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if !too_long && self.buf.len() + chunk.len() > MAX_LINE {
                too_long = true;
                self.buf = Vec::new();
            }
            if !too_long {
                self.buf.extend_from_slice(chunk);
            }
            let used = chunk.len() + usize::from(newline.is_some());
            self.reader.consume(used);
            if newline.is_some() {
                break true;
            }
        };
        self.number += 1;
        if too_long {
            return Ok(Some(Line::TooLong));
        }
        Ok(Some(match std::str::from_utf8(&self.buf) {
            Ok(text) => Line::Text { text, complete },
            Err(e) => Line::NotUtf8(e.valid_up_to()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line in short: `text`, `text…` (no newline), `#len`, `too long`, `not UTF-8 @n`.
    fn all(bytes: &[u8]) -> Vec<String> {
        let mut lines = Lines::new(io::BufReader::with_capacity(7, bytes));
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            out.push(match line {
                Line::Text { text, complete } if text.len() > 8 => {
                    format!("#{}{}", text.len(), if complete { "" } else { "…" })
                }
                Line::Text { text, complete } => {
                    format!("{text}{}", if complete { "" } else { "…" })
                }
                Line::TooLong => "too long".into(),
                Line::NotUtf8(at) => format!("not UTF-8 @{at}"),
            });
        }
        assert_eq!(lines.number, out.len() as u64);
        out
    }

    #[test]
    fn lines_are_bounded_and_checked() {
        let mut input = b"ab\n\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 1]);
        input.extend(b"\nc\xffd\n");
        input.extend(vec![b'y'; MAX_LINE]);
        let last = format!("#{MAX_LINE}…");
        assert_eq!(
            all(&input),
            ["ab", "", "too long", "not UTF-8 @1", last.as_str()]
        );
    }

    /// A reader that fails after its bytes, as a cut `.gz` does.
    struct Cut<'a>(&'a [u8]);

    impl io::Read for Cut<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_read_error_comes_after_the_partial_line() {
        let mut lines = Lines::new(io::BufReader::new(Cut(b"a\nb")));
        assert!(matches!(
            lines.next_line().unwrap(),
            Some(Line::Text {
                text: "a",
                complete: true
            })
        ));
        assert!(matches!(
            lines.next_line().unwrap(),
            Some(Line::Text {
                text: "b",
                complete: false
            })
        ));
        assert_eq!(lines.next_line().unwrap_err().to_string(), "cut");
    }
}
