//! `cargo xtask setup | build | run | test`: everything a fresh machine needs, in one place.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod bench_correlate;
mod bench_report;
mod bench_spark;
mod bench_verifier;
mod vm;
use clap::{Parser, Subcommand};

/// The bpf-linker release known to build against the nightly toolchain's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// Set to 1 to leave the kernel matrix (vm-test) out of `cargo xtask test`.
const SKIP_VM: &str = "SHUFFLETRACE_SKIP_VM";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "shuffletrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs and a fresh machine lacks (idempotent): the nightly
    /// toolchain's rust-src, and bpf-linker linked against that toolchain's own LLVM.
    Setup,
    /// Setup, then build the release binary target/release/shuffletrace.
    Build,
    /// Setup, build, then run shuffletrace live (as root, through sudo when needed).
    /// Arguments after `--` go to shuffletrace, e.g. `cargo xtask run -- --format json`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then: cargo fmt --check, clippy -D warnings, unit tests, the manifests and the
    /// alert rules (promtool check and test, offline), the root integration tests (network
    /// namespaces, real traffic, the real binary, a real Prometheus, the HTML report in headless
    /// Chromium), and last the kernel matrix of `vm-test` (skipped when
    /// SHUFFLETRACE_SKIP_VM=1).
    Test,
    /// Setup, then boot Debian's kernel packages under qemu and run the root integration
    /// tests inside each, against the freshly built binary.
    ///
    /// KERNEL is a short name: 6.1, 6.1-generic, 6.12, 6.12-generic, 5.10 (default: 6.1 6.12
    /// 5.10, the cloud flavours). The packages are resolved through Debian's meta packages
    /// with private apt lists under target/vm (the host's lists and status are untouched)
    /// and cached under target/vm/kernels. Full kernels run the scenario list; 5.10
    /// (degraded) runs a start-up check. Serial logs: target/vm/logs/KERNEL.log. Needs
    /// qemu-system-x86, busybox-static, kmod and cpio (installed with apt-get when missing).
    ///
    /// `cargo xtask test` runs the default matrix as its last step; set
    /// SHUFFLETRACE_SKIP_VM=1 to skip it there for a quick local run.
    VmTest(vm::VmArgs),
    /// Setup, build, then measure overhead against untraced runs, the floor and bpftrace
    /// (root): connection churn, refused connects, bulk throughput, start-up and memory.
    Bench {
        /// Instead: a Spark job's wall time with and without shuffletrace (a local standalone
        /// cluster with the external shuffle service; downloads pyspark's sdist from PyPI
        /// once, needs Java 17).
        #[arg(long)]
        spark: bool,
    },
    /// Build, then measure the peak RSS of `shuffletrace report` on a generated trace
    /// (target/bench/report-<SIZE>MiB.ndjson) against its budget. Needs no root.
    BenchReport {
        /// Size of the generated trace.
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        size_mib: u64,
        /// Measure this binary instead of building target/release/shuffletrace (e.g. an
        /// older build, for a before/after figure).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Build, then measure `shuffletrace correlate` (peak RSS, time, and that every joined
    /// connection is counted) on two generated nodes' traces (target/bench/correlate).
    BenchCorrelate {
        /// Size of the generated traces, both nodes together.
        #[arg(long, value_name = "MIB", default_value_t = 1024)]
        size_mib: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Build => setup().and_then(|()| build()),
        Task::Run { args } => setup().and_then(|()| build()).and_then(|()| run(&args)),
        Task::Test => setup().and_then(|()| test()),
        Task::VmTest(args) => setup().and_then(|()| vm::run(&args)),
        Task::Bench { spark: true } => setup()
            .and_then(|()| build())
            .and_then(|()| bench_spark::run(&workspace_root())),
        Task::Bench { spark: false } => setup()
            .and_then(|()| build())
            .and_then(|()| run_checked(cargo().args(["build", "--release", "--package", "stload"])))
            .and_then(|()| bench::run()),
        Task::BenchReport { size_mib, binary } => {
            let binary = match binary {
                Some(binary) => Ok(binary),
                None => setup()
                    .and_then(|()| build())
                    .map(|()| workspace_root().join("target/release/shuffletrace")),
            };
            binary.and_then(|binary| bench_report::run(&workspace_root(), &binary, size_mib))
        }
        Task::BenchCorrelate { size_mib } => setup().and_then(|()| build()).and_then(|()| {
            let root = workspace_root();
            bench_correlate::run(&root, &root.join("target/release/shuffletrace"), size_mib)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command, failing with its name when it fails.
fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None when it cannot run or fails.
fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn is_root() -> bool {
    output_of("id", &["-u"]).is_some_and(|uid| uid.trim() == "0")
}

fn setup() -> Result<()> {
    let toolchains = output_of("rustup", &["toolchain", "list"])
        .context("rustup is needed to build the eBPF programs (nightly toolchain)")?;
    if !toolchains.lines().any(|line| line.starts_with(NIGHTLY)) {
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }

    let components = output_of(
        "rustup",
        &["component", "list", "--toolchain", NIGHTLY, "--installed"],
    )
    .unwrap_or_default();
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }

    // bpf-linker must load the nightly toolchain's libLLVM, which rustup puts on the library
    // path of `rustup run nightly`: that is how aya-build invokes it.
    let linker_works = output_of("rustup", &["run", NIGHTLY, "bpf-linker", "--version"]).is_some();
    if !linker_works {
        install_bpf_linker()?;
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let sysroot = output_of("rustup", &["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .context("asking the nightly rustc for its sysroot")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|name| name.starts_with("libLLVM") && name.contains(".so"))
        })
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))?;
    let verbose = output_of("rustup", &["run", NIGHTLY, "rustc", "-vV"]).unwrap_or_default();
    let llvm_major = verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .context("the nightly rustc does not say its LLVM version")?
        .to_owned();

    // A prefix whose lib/libLLVM.so is the toolchain's own LLVM, for llvm-sys to link against.
    let prefix = workspace_root().join("target/xtask/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;

    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if output_of("rustup", &["run", NIGHTLY, "bpf-linker", "--version"]).is_none() {
        bail!("bpf-linker was installed but does not run under the nightly toolchain");
    }
    Ok(())
}

fn build() -> Result<()> {
    run_checked(cargo().args(["build", "--release", "--package", "tracer-user"]))
}

fn run(args: &[String]) -> Result<()> {
    let binary = workspace_root().join("target/release/shuffletrace");
    let mut cmd = if is_root() {
        Command::new(&binary)
    } else {
        eprintln!("xtask: shuffletrace needs root to load eBPF programs; using sudo");
        let mut cmd = Command::new("sudo");
        cmd.arg(&binary);
        cmd
    };
    let status = cmd.args(args).status().context("starting shuffletrace")?;
    if !status.success() {
        bail!("shuffletrace exited with {status}");
    }
    Ok(())
}

/// Installs a Debian package when its command is missing (test prerequisites).
fn ensure_command(command: &str, package: &str) -> Result<()> {
    if output_of("sh", &["-c", &format!("command -v {command}")]).is_some() {
        return Ok(());
    }
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(Command::new("apt-get").args(["install", "-y", package]))
}

/// The alert rules: valid for Prometheus (`promtool check rules`), each alert proven firing
/// and quiet (`promtool test rules`), and the PrometheusRule generated from them in sync.
/// Debian's prometheus package ships promtool, and the server the root tests run.
fn prometheus_rules() -> Result<()> {
    ensure_command("promtool", "prometheus")?;
    let dir = workspace_root().join("deploy/prometheus");
    run_checked(
        Command::new("promtool")
            .args(["check", "rules", "shuffletrace.rules.yml"])
            .current_dir(&dir),
    )?;
    run_checked(
        Command::new("promtool")
            .args(["test", "rules", "tests.yml"])
            .current_dir(&dir),
    )?;
    run_checked(Command::new("python3").arg("rules.py").current_dir(&dir))
}

fn test() -> Result<()> {
    run_checked(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The root integration tests too (they are built only with their feature).
    run_checked(cargo().args([
        "clippy",
        "--all-targets",
        "--features",
        "tracer-user/root-tests",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests: decoding, correlation, parsing (no root needed).
    run_checked(cargo().args(["test", "--package", "tracer-user", "--bins"]))?;

    // Kubernetes manifests: the official client's API models and the DaemonSet's policy.
    if output_of("python3", &["-c", "import kubernetes, yaml"]).is_none() {
        run_checked(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "kubernetes",
            "pyyaml",
        ]))?;
    }
    run_checked(
        Command::new("python3")
            .arg("deploy/check_manifests.py")
            .current_dir(workspace_root()),
    )?;

    prometheus_rules()?;

    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and build network namespaces: run \
             `sudo cargo xtask test` (or as root)"
        );
    }
    ensure_command("ip", "iproute2")?;
    ensure_command("iptables", "iptables")?;
    ensure_command("openssl", "openssl")?;
    ensure_command("/usr/bin/python3", "python3")?;
    // Renders the HTML report in tests/html.rs.
    ensure_command("chromium", "chromium")?;
    run_checked(cargo().args([
        "test",
        "--package",
        "tracer-user",
        "--features",
        "root-tests",
        "--test",
        "live",
        "--test",
        "findings",
        "--test",
        "idle",
        "--test",
        "tls",
        "--test",
        "export",
        "--test",
        "report",
        "--test",
        "html",
        "--test",
        "k8s",
        "--test",
        "hardening",
        "--test",
        "prometheus",
        "--test",
        "correlate",
        "--",
        "--test-threads=1",
    ]))?;

    // Last: the same tests inside Debian's kernels under qemu (minutes under TCG).
    if env::var_os(SKIP_VM).is_some_and(|v| v == "1") {
        eprintln!("xtask: {SKIP_VM}=1: skipping the kernel matrix (cargo xtask vm-test)");
        return Ok(());
    }
    vm::run(&vm::VmArgs::default_matrix())
}
