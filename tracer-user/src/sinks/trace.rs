//! Trace files: the NDJSON stream written to `--trace-dir`, rotated by size, names that sort
//! by time, a bounded number kept. Every line goes to exactly one file.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// File names: `shuffletrace-<UTC time>-<sequence>.ndjson`; both parts sort as text.
const PREFIX: &str = "shuffletrace-";
const SUFFIX: &str = ".ndjson";

pub struct TraceWriter {
    dir: PathBuf,
    max_size: u64,
    keep: usize,
    current: Option<(BufWriter<File>, u64)>,
    /// The run's `start` line, repeated at the head of every file so that each file says
    /// which node, ports and kernel it is about.
    header: Option<Vec<u8>>,
    sequence: u64,
    bytes_written: u64,
    files_deleted: u64,
}

/// `shuffletrace-20261122T233901.123456789Z-000001.ndjson` for `time`.
fn file_name(time: SystemTime, sequence: u64) -> String {
    let stamp = humantime::format_rfc3339_nanos(time)
        .to_string()
        .replace(['-', ':'], "");
    format!("{PREFIX}{stamp}-{sequence:06}{SUFFIX}")
}

/// Trace files in `dir`, oldest first (by name, which sorts by time).
pub fn trace_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| {
                    name.starts_with(PREFIX)
                        && (name.ends_with(SUFFIX) || name.ends_with(".ndjson.gz"))
                })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Creates a new file only its owner can read.
fn private_file(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

impl TraceWriter {
    /// Opens `dir` (created if missing) for writing; fails with a clear message when it
    /// cannot be written.
    /// A directory it creates is 0700 and its files 0600: incident evidence (addresses,
    /// processes, pods) for root's eyes, unless the directory given says otherwise.
    pub fn new(dir: &Path, max_size: u64, keep: usize) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let probe = dir.join(".shuffletrace-write-test");
        // One left by a run that was killed at this point.
        let _ = fs::remove_file(&probe);
        private_file(&probe)?;
        fs::remove_file(&probe)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_size: max_size.max(1),
            keep: keep.max(1),
            current: None,
            header: None,
            sequence: 0,
            bytes_written: 0,
            files_deleted: 0,
        })
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn files_deleted(&self) -> u64 {
        self.files_deleted
    }

    fn open_next(&mut self) -> io::Result<()> {
        if let Some((mut file, _)) = self.current.take() {
            file.flush()?;
        }
        self.sequence += 1;
        let path = self.dir.join(file_name(SystemTime::now(), self.sequence));
        let file = private_file(&path)?;
        let mut file = BufWriter::new(file);
        let mut size = 0;
        if let Some(header) = &self.header {
            file.write_all(header)?;
            size = header.len() as u64;
            self.bytes_written += size;
        }
        self.current = Some((file, size));
        self.prune()
    }

    /// Sets the header line (the run's `start` line) written first in every later file.
    pub fn set_header(&mut self, line: &[u8]) {
        self.header = Some(line.to_vec());
    }

    /// Deletes the oldest files beyond `keep` (this writer's and earlier runs').
    fn prune(&mut self) -> io::Result<()> {
        let files = trace_files(&self.dir)?;
        if files.len() > self.keep {
            for old in &files[..files.len() - self.keep] {
                fs::remove_file(old)?;
                self.files_deleted += 1;
            }
        }
        Ok(())
    }

    /// Writes one line (with its newline). A line never spans two files; a line longer than
    /// the size limit gets a file of its own.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let needed = line.len() as u64;
        let header = self.header.as_ref().map_or(0, |h| h.len() as u64);
        let full = match &self.current {
            None => true,
            Some((_, size)) => *size > header && size + needed > self.max_size,
        };
        if full {
            self.open_next()?;
        }
        let (file, size) = self.current.as_mut().expect("opened above");
        file.write_all(line)?;
        *size += needed;
        self.bytes_written += needed;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((file, _)) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Parses a size like `64MiB`, `10MB`, `512k`, `1000`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("st-trace-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512k"), Some(512_000));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn rotates_by_size_keeps_every_line_once_and_prunes() {
        let dir = temp_dir("rotate");
        let mut writer = TraceWriter::new(&dir, 100, 3).unwrap();
        let lines: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i:04}}}\n")).collect();
        for line in &lines {
            writer.write_line(line.as_bytes()).unwrap();
        }
        writer.flush().unwrap();
        let files = trace_files(&dir).unwrap();
        assert_eq!(files.len(), 3, "kept");
        assert!(writer.files_deleted() > 0);
        let mut seen = Vec::new();
        for file in &files {
            let text = fs::read_to_string(file).unwrap();
            assert!(text.len() <= 100);
            seen.extend(text.lines().map(str::to_owned));
        }
        // The kept files hold the newest lines, in order, each once.
        let expected: Vec<String> = lines[lines.len() - seen.len()..]
            .iter()
            .map(|l| l.trim_end().to_owned())
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(
            writer.bytes_written(),
            lines.iter().map(|l| l.len() as u64).sum::<u64>()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_sort_by_time() {
        let a = file_name(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100),
            2,
        );
        let b = file_name(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(101),
            1,
        );
        assert!(a < b, "{a} {b}");
        assert!(a.starts_with(PREFIX) && a.ends_with(SUFFIX));
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        assert!(TraceWriter::new(Path::new("/proc/self/shuffletrace"), 100, 3).is_err());
    }
}
