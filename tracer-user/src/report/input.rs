//! Reading trace files for `report`: files and directories in order, `.gz`, and each line
//! checked. Only regular files are read: a FIFO blocks forever and a device never ends, so
//! a named one is refused and one met in a directory is skipped and counted. With
//! `--skip-bad` a bad line is counted and a read error (a cut `.gz`) ends that input, keeping
//! what came before; without it either stops the report with `FILE:LINE: what is wrong`.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::lines::{Line, Lines};
use crate::{error::BadInput, sinks::SCHEMA_VERSION, sinks::trace};

/// One file to read; `named` when given on the command line (not found in a directory).
pub struct Input {
    path: PathBuf,
    named: bool,
}

/// The files to read, in order: files as given, directories' trace files oldest first.
fn inputs(paths: &[PathBuf]) -> Result<Vec<Input>, BadInput> {
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                BadInput(format!("{}: no such file or directory", path.display()))
            }
            _ => BadInput(format!("cannot read {}: {e}", path.display())),
        })?;
        if meta.is_dir() {
            let found = trace::trace_files(path)
                .map_err(|e| BadInput(format!("cannot read directory {}: {e}", path.display())))?;
            if found.is_empty() {
                return Err(BadInput(format!(
                    "{} holds no shuffletrace trace files (shuffletrace-*.ndjson[.gz])",
                    path.display()
                )));
            }
            files.extend(found.into_iter().map(|path| Input { path, named: false }));
        } else if meta.is_file() {
            files.push(Input {
                path: path.clone(),
                named: true,
            });
        } else {
            return Err(BadInput(format!("{}: not a regular file", path.display())));
        }
    }
    Ok(files)
}

/// The file's lines (decompressed for `.gz`), or `None` when it is not a regular file.
fn open(path: &Path) -> io::Result<Option<Box<dyn BufRead>>> {
    if !fs::metadata(path)?.is_file() {
        return Ok(None);
    }
    // Checked again on the open file (it may have been replaced): O_NONBLOCK so that opening
    // a FIFO does not wait for a writer.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(Some(if gz {
        // Multi: `cat a.gz b.gz` is one valid gzip file of two members.
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, file))
    }))
}

/// Parses one line; the error says what is wrong with it.
pub(super) fn parse_line(text: &str, complete: bool) -> Result<Value, String> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) if !complete => return Err("truncated line (the file was cut)".into()),
        Err(e) => return Err(format!("not JSON ({e})")),
    };
    if !value.is_object() || !value["type"].is_string() {
        return Err("not a shuffletrace line (no \"type\")".into());
    }
    match value["v"].as_u64() {
        Some(v) if v == u64::from(SCHEMA_VERSION) => Ok(value),
        Some(v) => Err(format!(
            "schema version {v}; this shuffletrace reads version {SCHEMA_VERSION}"
        )),
        None => Err("no schema version (\"v\")".into()),
    }
}

/// What reading the inputs found, besides the lines.
#[derive(Debug, Default)]
pub struct Totals {
    /// The files read.
    pub files: Vec<String>,
    /// Lines that are not blank, good or bad.
    pub lines: u64,
    pub skipped_lines: u64,
    /// Found in a directory but not regular files: not read.
    pub skipped_inputs: u64,
    /// Ended early by a read error (a cut `.gz`): read up to it.
    pub truncated_inputs: u64,
    /// Lines of the tool's own log in `kubectl logs --prefix` output: not read.
    pub log_lines: u64,
}

/// One input being read: its lines, checked one by one (see `Source::next_value`).
pub struct Source {
    pub name: String,
    gz: bool,
    lines: Lines<Box<dyn BufRead>>,
    done: bool,
}

/// The inputs in order (a directory's trace files oldest first); `-` is standard input when
/// `dash_is_stdin` (`correlate` reads `kubectl logs` through a pipe), read last.
pub fn plan(paths: &[PathBuf], dash_is_stdin: bool) -> Result<Vec<Input>, BadInput> {
    let (stdin, files): (Vec<&PathBuf>, Vec<&PathBuf>) = paths
        .iter()
        .partition(|path| dash_is_stdin && path.as_os_str() == "-");
    if stdin.len() > 1 {
        return Err(BadInput("`-` (standard input) given more than once".into()));
    }
    let files: Vec<PathBuf> = files.into_iter().cloned().collect();
    let mut planned = inputs(&files)?;
    if !stdin.is_empty() {
        planned.push(Input {
            path: PathBuf::from("-"),
            named: true,
        });
    }
    Ok(planned)
}

/// Opens one planned input. A named input that is not a regular file is an error; one met in
/// a directory is skipped (None), warned about and counted.
pub fn open_source(input: &Input, totals: &mut Totals) -> Result<Option<Source>, BadInput> {
    if input.named && input.path.as_os_str() == "-" {
        totals.files.push("-".into());
        let reader: Box<dyn BufRead> = Box::new(BufReader::with_capacity(1 << 16, io::stdin()));
        return Ok(Some(Source::new("(standard input)".into(), false, reader)));
    }
    let name = input.path.display().to_string();
    let reader = match open(&input.path) {
        Ok(Some(reader)) => reader,
        Ok(None) if input.named => return Err(BadInput(format!("{name}: not a regular file"))),
        Ok(None) => {
            tracing::warn!("{name}: not a regular file: skipped");
            totals.skipped_inputs += 1;
            return Ok(None);
        }
        Err(e) => return Err(BadInput(format!("cannot read {name}: {e}"))),
    };
    let gz = input.path.extension().is_some_and(|e| e == "gz");
    totals.files.push(name.clone());
    Ok(Some(Source::new(name, gz, reader)))
}

/// Reads every input in order, one open at a time, and gives each good line to `each`.
pub fn read(
    paths: &[PathBuf],
    skip_bad: bool,
    mut each: impl FnMut(&Value),
) -> Result<Totals, BadInput> {
    let mut totals = Totals::default();
    for input in plan(paths, false)? {
        let Some(mut source) = open_source(&input, &mut totals)? else {
            continue;
        };
        while let Some(value) = source.next_value(skip_bad, &mut totals)? {
            each(&value);
        }
    }
    Ok(totals)
}

/// The prefix `kubectl logs --prefix` puts before each line (`[pod/NAME/CONTAINER] `), and
/// the time `--timestamps` puts after it, taken off; the rest of the line as it was. Says
/// whether a prefix was there: such a stream mixes the tool's own log lines (stderr) in.
pub fn strip_log_prefix(text: &str) -> (&str, bool) {
    let mut rest = text;
    let mut prefixed = false;
    if rest.starts_with("[pod/")
        && let Some(end) = rest.find("] ")
    {
        rest = &rest[end + 2..];
        prefixed = true;
    }
    // `--timestamps`: an RFC 3339 time and a space before the line.
    if let Some((first, after)) = rest.split_once(' ')
        && first.len() >= 20
        && first.as_bytes()[4] == b'-'
        && first.as_bytes()[10] == b'T'
        && humantime::parse_rfc3339_weak(first.trim_end_matches('Z')).is_ok()
    {
        rest = after;
        prefixed = true;
    }
    (rest, prefixed)
}

impl Source {
    fn new(name: String, gz: bool, reader: Box<dyn BufRead>) -> Self {
        Self {
            name,
            gz,
            lines: Lines::new(reader),
            done: false,
        }
    }

    /// The next good line, `None` at the end. With `skip_bad` a bad line is counted and
    /// skipped, and a read error (a cut `.gz`) ends the input; without it either is an error
    /// naming the input and the line. A line that came with a `kubectl logs` prefix and is
    /// not JSON is the tool's own log (stderr): counted in `log_lines`, never an error.
    pub fn next_value(
        &mut self,
        skip_bad: bool,
        totals: &mut Totals,
    ) -> Result<Option<Value>, BadInput> {
        let name = &self.name;
        while !self.done {
            let checked = match self.lines.next_line() {
                Ok(None) => {
                    self.done = true;
                    return Ok(None);
                }
                Ok(Some(Line::Text { text, complete })) => {
                    let (text, prefixed) = strip_log_prefix(text.trim_end());
                    if text.is_empty() {
                        continue;
                    }
                    if prefixed && !text.starts_with('{') {
                        totals.log_lines += 1;
                        continue;
                    }
                    parse_line(text, complete)
                }
                Ok(Some(Line::TooLong)) => {
                    Err("line longer than 1 MiB (shuffletrace writes none that long)".to_owned())
                }
                Ok(Some(Line::NotUtf8(at))) => {
                    Err(format!("not UTF-8 (byte {} of the line)", at + 1))
                }
                Err(e) => {
                    let what = if self.gz {
                        format!("truncated or corrupt gzip data ({e})")
                    } else {
                        format!("read error ({e})")
                    };
                    if skip_bad {
                        tracing::warn!(
                            "{name}: {what} after line {}: read up to there",
                            self.lines.number
                        );
                        totals.truncated_inputs += 1;
                        self.done = true;
                        return Ok(None);
                    }
                    return Err(BadInput(format!(
                        "{name}:{}: {what} (use --skip-bad to read what comes before)",
                        self.lines.number + 1
                    )));
                }
            };
            totals.lines += 1;
            match checked {
                Ok(value) => return Ok(Some(value)),
                Err(_) if skip_bad => totals.skipped_lines += 1,
                Err(why) => {
                    return Err(BadInput(format!(
                        "{name}:{}: {why} (use --skip-bad to skip such lines)",
                        self.lines.number
                    )));
                }
            }
        }
        Ok(None)
    }
}
