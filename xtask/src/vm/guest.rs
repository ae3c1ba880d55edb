//! Booting guests under qemu (KVM where it is real, TCG otherwise), two at a time, with
//! the serial console copied to the log and a guest killed when it falls silent.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::*;

/// How qemu runs the guest.
pub(super) struct Accel {
    pub(super) accel: &'static str,
    pub(super) cpu: &'static str,
}

impl Accel {
    /// KVM where it is real; TCG where /dev/kvm is missing, not usable, or the nested PVM
    /// hypervisor (kvm_pvm), which runs only kernels built for it.
    pub(super) fn detect() -> Self {
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        let kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if kvm && !pvm {
            Self {
                accel: "kvm",
                cpu: "host",
            }
        } else {
            // Without cx16: this host's qemu (7.2) mis-emulates cmpxchg16b under
            // multi-threaded TCG, and 6.x kernels then die of a double fault in the slab
            // allocator during boot in about one boot of ten (0 of 50 without it).
            Self {
                accel: "tcg,thread=multi",
                cpu: "max,-cx16",
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("-accel {} -cpu {}", self.accel, self.cpu)
    }
}

/// What came back from one guest.
pub(super) struct GuestRun {
    pub(super) log: String,
    pub(super) wall: Duration,
    /// Why the harness killed it, if it did.
    pub(super) killed: Option<String>,
}

/// Runs `boot` for each guest, `jobs` at a time, returning the results in order.
pub(super) fn run_guests<F>(
    guests: &[(Kernel, PathBuf)],
    jobs: usize,
    boot: F,
) -> Vec<Result<GuestRun>>
where
    F: Fn(&Kernel, &Path) -> Result<GuestRun> + Sync,
{
    let next = AtomicU64::new(0);
    let mut results: Vec<Option<Result<GuestRun>>> = guests.iter().map(|_| None).collect();
    thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(guests.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                        let Some((kernel, initrd)) = guests.get(i) else {
                            return done;
                        };
                        done.push((i, boot(kernel, initrd)));
                    }
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(done) => {
                    for (i, result) in done {
                        results[i] = Some(result);
                    }
                }
                Err(_) => eprintln!("xtask: vm: a guest runner panicked"),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow!("the guest was not run"))))
        .collect()
}

/// Boots one guest; one that died before its init spoke is booted once more, in case that
/// was the emulator and not the kernel (the first log is kept beside the second).
pub(super) fn boot_guest(
    kernel: &Kernel,
    initrd: &Path,
    log: &Path,
    accel: &Accel,
    limit: Duration,
) -> Result<GuestRun> {
    let run = boot(kernel, initrd, log, accel, limit)?;
    if run.log.contains("VMTEST-BOOT") {
        return Ok(run);
    }
    let first = log.with_extension("first-boot.log");
    fs::rename(log, &first)?;
    eprintln!(
        "xtask: vm: {}: the guest died before its init ran ({}); booting again",
        kernel.spec.name,
        first.display()
    );
    boot(kernel, initrd, log, accel, limit)
}

/// Boots one guest and collects its serial log, killing it when it exceeds `limit` or goes
/// silent for SILENCE_LIMIT.
pub(super) fn boot(
    kernel: &Kernel,
    initrd: &Path,
    log_path: &Path,
    accel: &Accel,
    limit: Duration,
) -> Result<GuestRun> {
    eprintln!(
        "xtask: vm: {}: booting {}",
        kernel.spec.name, kernel.release
    );
    let started = Instant::now();
    let mut child = qemu_command(kernel, initrd, accel)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    // Seconds after `started` of the guest's last VMTEST line; 0 until its init speaks.
    let last_line = Arc::new(AtomicU64::new(0));
    let log_file =
        fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let reader = {
        let (prefix, last_line) = (kernel.spec.name.to_owned(), Arc::clone(&last_line));
        thread::spawn(move || read_console(stdout, log_file, &prefix, started, &last_line))
    };
    let stderr = child.stderr.take().context("qemu stderr")?;
    let errors = thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let killed = watch(&mut child, started, &last_line, limit)?;
    let wall = started.elapsed();
    let mut log = reader
        .join()
        .map_err(|_| anyhow!("the serial log reader panicked"))?;
    let qemu_errors = errors.join().unwrap_or_default();
    if !qemu_errors.trim().is_empty() {
        let text = format!("qemu stderr:\n{qemu_errors}");
        log.push_str(&text);
        fs::OpenOptions::new()
            .append(true)
            .open(log_path)?
            .write_all(text.as_bytes())?;
    }
    Ok(GuestRun { log, wall, killed })
}

pub(super) fn qemu_command(kernel: &Kernel, initrd: &Path, accel: &Accel) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", accel.accel, "-cpu", accel.cpu])
        .args(["-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            // random.trust_cpu: no entropy wait on 5.10 (RDRAND of -cpu max).
            "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Copies the serial console to the log file and returns it; shows the VMTEST lines as
/// they come and notes when the last one came.
pub(super) fn read_console(
    console: impl std::io::Read,
    mut log_file: fs::File,
    prefix: &str,
    started: Instant,
    last_line: &AtomicU64,
) -> String {
    let mut log = String::new();
    for line in BufReader::new(console).split(b'\n') {
        let Ok(line) = line else { break };
        let mut line = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_owned();
        // The console's first line carries the firmware's escape sequences.
        if let Some(at) = line.find("VMTEST").filter(|&at| at > 0) {
            line.drain(..at);
        }
        let _ = writeln!(log_file, "{line}");
        if line.starts_with("VMTEST") {
            last_line.store(started.elapsed().as_secs().max(1), Ordering::SeqCst);
            if !line.starts_with("VMTEST-OUTPUT") && !line.starts_with("VMTEST-STDERR") {
                eprintln!("xtask: vm: {prefix}: {line}");
            }
        }
        log.push_str(&line);
        log.push('\n');
    }
    log
}

/// Waits for qemu to exit; kills it when the guest runs past `limit`, its init never speaks,
/// or it goes silent, and says why.
pub(super) fn watch(
    child: &mut Child,
    started: Instant,
    last_line: &AtomicU64,
    limit: Duration,
) -> Result<Option<String>> {
    loop {
        if child.try_wait()?.is_some() {
            return Ok(None);
        }
        let elapsed = started.elapsed();
        let last = last_line.load(Ordering::SeqCst);
        let silent = elapsed.saturating_sub(Duration::from_secs(last));
        let reason = if elapsed > limit {
            Some(format!("timed out after {} s", limit.as_secs()))
        } else if last == 0 && elapsed > INIT_LIMIT {
            Some(format!("no init after {} s", INIT_LIMIT.as_secs()))
        } else if last > 0 && silent > SILENCE_LIMIT {
            Some(format!("silent for {} s", silent.as_secs()))
        } else {
            None
        };
        if reason.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(reason);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// Results
