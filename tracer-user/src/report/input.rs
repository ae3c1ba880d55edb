//! Reading trace files for `report`: files and directories in order, `.gz`, a cut last line,
//! lines of another schema version, and the time filters.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{error::BadInput, sinks::SCHEMA_VERSION, sinks::trace};

/// The files to read, in order: files as given, directories' trace files oldest first.
pub(super) fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BadInput> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = trace::trace_files(path)
                .map_err(|e| BadInput(format!("cannot read directory {}: {e}", path.display())))?;
            if found.is_empty() {
                return Err(BadInput(format!(
                    "{} holds no shuffletrace trace files (shuffletrace-*.ndjson[.gz])",
                    path.display()
                )));
            }
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(BadInput(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    Ok(files)
}

pub(super) fn open(path: &Path) -> Result<Box<dyn Read>, BadInput> {
    let file =
        File::open(path).map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
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

/// Every line of every file, checked. With `skip_bad`, bad lines are counted instead.
pub fn read_lines(paths: &[PathBuf], skip_bad: bool) -> Result<(Vec<Value>, u64), BadInput> {
    let mut lines = Vec::new();
    let mut skipped = 0;
    for path in input_files(paths)? {
        let mut reader = BufReader::new(open(&path)?);
        let mut number = 0;
        let mut buf = String::new();
        loop {
            buf.clear();
            let read = reader
                .read_line(&mut buf)
                .map_err(|e| BadInput(format!("{}:{}: {e}", path.display(), number + 1)))?;
            if read == 0 {
                break;
            }
            number += 1;
            let complete = buf.ends_with('\n');
            let text = buf.trim_end();
            if text.is_empty() {
                continue;
            }
            match parse_line(text, complete) {
                Ok(value) => lines.push(value),
                Err(_) if skip_bad => skipped += 1,
                Err(why) => {
                    return Err(BadInput(format!(
                        "{}:{number}: {why} (use --skip-bad to skip such lines)",
                        path.display()
                    )));
                }
            }
        }
    }
    Ok((lines, skipped))
}
