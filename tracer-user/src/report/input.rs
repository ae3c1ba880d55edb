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
struct Input {
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
}

/// Reads every input in order and gives each good line to `each`.
pub fn read(
    paths: &[PathBuf],
    skip_bad: bool,
    mut each: impl FnMut(&Value),
) -> Result<Totals, BadInput> {
    let mut totals = Totals::default();
    for input in inputs(paths)? {
        let name = input.path.display().to_string();
        let reader = match open(&input.path) {
            Ok(Some(reader)) => reader,
            Ok(None) if input.named => return Err(BadInput(format!("{name}: not a regular file"))),
            Ok(None) => {
                tracing::warn!("{name}: not a regular file: skipped");
                totals.skipped_inputs += 1;
                continue;
            }
            Err(e) => return Err(BadInput(format!("cannot read {name}: {e}"))),
        };
        let gz = input.path.extension().is_some_and(|e| e == "gz");
        read_file(&name, gz, reader, skip_bad, &mut totals, &mut each)?;
        totals.files.push(name);
    }
    Ok(totals)
}

fn read_file(
    name: &str,
    gz: bool,
    reader: Box<dyn BufRead>,
    skip_bad: bool,
    totals: &mut Totals,
    each: &mut impl FnMut(&Value),
) -> Result<(), BadInput> {
    let mut lines = Lines::new(reader);
    loop {
        let checked = match lines.next_line() {
            Ok(None) => return Ok(()),
            Ok(Some(Line::Text { text, complete })) => {
                let text = text.trim_end();
                if text.is_empty() {
                    continue;
                }
                parse_line(text, complete)
            }
            Ok(Some(Line::TooLong)) => {
                Err("line longer than 1 MiB (shuffletrace writes none that long)".to_owned())
            }
            Ok(Some(Line::NotUtf8(at))) => Err(format!("not UTF-8 (byte {} of the line)", at + 1)),
            Err(e) => {
                let what = if gz {
                    format!("truncated or corrupt gzip data ({e})")
                } else {
                    format!("read error ({e})")
                };
                if skip_bad {
                    tracing::warn!(
                        "{name}: {what} after line {}: read up to there",
                        lines.number
                    );
                    totals.truncated_inputs += 1;
                    return Ok(());
                }
                return Err(BadInput(format!(
                    "{name}:{}: {what} (use --skip-bad to read what comes before)",
                    lines.number + 1
                )));
            }
        };
        totals.lines += 1;
        match checked {
            Ok(value) => each(&value),
            Err(_) if skip_bad => totals.skipped_lines += 1,
            Err(why) => {
                return Err(BadInput(format!(
                    "{name}:{}: {why} (use --skip-bad to skip such lines)",
                    lines.number
                )));
            }
        }
    }
}
