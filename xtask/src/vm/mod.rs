//! `cargo xtask vm-test`: the root integration tests, run inside Debian's own kernels.
//!
//! Why: the kernel programs meet the verifier, the tracepoints and the BTF of whatever kernel
//! a node runs, and a program the build host's kernel accepts can be rejected by another
//! (stack limits, helpers and tracepoint arguments differ between 5.10, 6.1 and 6.12). The
//! only proof is to load them there. So each kernel of the matrix is Debian's own package,
//! resolved through its meta package (the ABI number is never pinned), booted under qemu with
//! a self-contained initramfs that holds the freshly built tracer and test binaries at the
//! paths compiled into them, plus the tools the tests call (iproute2, iptables, python3,
//! openssl) and the kernel modules they need. The guest's init (xtask/vm/init) runs a fixed
//! scenario list and prints one `VMTEST` line per result on the serial console; that log is
//! the only thing read back. The host's apt state is never touched: every suite set has its
//! own apt directories under target/vm.

mod guest;
mod initramfs;
mod kernels;
mod results;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::{cargo, is_root, run_checked, workspace_root};

use guest::*;
use initramfs::*;
use kernels::*;
use results::*;

/// What a kernel of the matrix is expected to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Every scenario must pass.
    Full,
    /// A start-up check (see [`degraded_verdict`]), then the scenarios the kernel can give
    /// (all but `skip`), with `expect_missing` as the programs the start line must miss.
    Degraded,
}

/// One kernel of the matrix.
struct KernelSpec {
    /// The short name on the command line.
    name: &'static str,
    /// The resolved image package must be linux-image-SERIES.*
    series: &'static str,
    apt: &'static AptRoot,
    /// The meta package whose dependency names the current image package.
    meta: &'static str,
    mode: Mode,
    /// Scenarios that need what this kernel lacks (not run on it).
    skip: &'static [&'static str],
    /// Programs this kernel cannot load, in attach order (SHUFFLETRACE_EXPECT_MISSING for
    /// the tests).
    expect_missing: &'static [&'static str],
}

/// The kernel table: change a kernel's expectation here.
const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        series: "6.1",
        apt: &BOOKWORM,
        meta: "linux-image-cloud-amd64",
        mode: Mode::Full,
        skip: &[],
        expect_missing: &[],
    },
    KernelSpec {
        name: "6.1-generic",
        series: "6.1",
        apt: &BOOKWORM,
        meta: "linux-image-amd64",
        mode: Mode::Full,
        skip: &[],
        expect_missing: &[],
    },
    KernelSpec {
        name: "6.12",
        series: "6.12",
        apt: &BOOKWORM_BACKPORTS,
        meta: "linux-image-cloud-amd64",
        mode: Mode::Full,
        skip: &[],
        expect_missing: &[],
    },
    KernelSpec {
        name: "6.12-generic",
        series: "6.12",
        apt: &BOOKWORM_BACKPORTS,
        meta: "linux-image-amd64",
        mode: Mode::Full,
        skip: &[],
        expect_missing: &[],
    },
    KernelSpec {
        name: "5.10",
        series: "5.10",
        apt: &BULLSEYE,
        meta: "linux-image-cloud-amd64",
        mode: Mode::Degraded,
        // No RST without a socket before 6.10, and no drop reason for kfree_skb to stand in.
        skip: &["refused", "connect-refused", "late-segment"],
        expect_missing: &["kfree_skb", "inet_sk_error_report"],
    },
];

/// The matrix `cargo xtask vm-test` (and `cargo xtask test`) runs when no kernel is named.
pub const DEFAULT_KERNELS: &[&str] = &["6.1", "6.12", "5.10"];

/// A test function of one of the integration test binaries.
struct Scenario {
    name: &'static str,
    /// The test target (tests/BINARY.rs).
    binary: &'static str,
    test: &'static str,
}

const fn scenario(name: &'static str, binary: &'static str, test: &'static str) -> Scenario {
    Scenario { name, binary, test }
}

/// What every full kernel runs, in this order.
const SCENARIOS: &[Scenario] = &[
    scenario(
        "refused",
        "live",
        "refused_connect_to_closed_port_ipv4_and_ipv6",
    ),
    scenario(
        "connect-ok",
        "live",
        "successful_connect_to_open_watched_port",
    ),
    scenario(
        "clean-summaries",
        "live",
        "clean_connections_are_summarised_exactly",
    ),
    scenario(
        "close-unseen",
        "live",
        "a_close_the_kernel_skipped_is_accounted_for_and_frees_its_slot",
    ),
    scenario(
        "slot-expired",
        "live",
        "slots_whose_end_the_kernel_never_reported_are_dropped_and_counted",
    ),
    scenario(
        "slot-gone",
        "live",
        "a_silent_slot_goes_once_the_kernel_says_its_socket_is_gone_and_not_before",
    ),
    scenario(
        "connect-refused",
        "findings",
        "a_refused_connect_between_two_namespaces_is_one_finding_naming_both",
    ),
    scenario(
        "connect-timeout",
        "findings",
        "dropped_syns_are_connect_timeout_updated_when_the_socket_gives_up",
    ),
    scenario(
        "middlebox-reset",
        "findings",
        "reset_from_a_router_is_a_middlebox_reset",
    ),
    scenario(
        "return-path-blocked",
        "findings",
        "dropped_synacks_are_return_path_blocked_on_the_server",
    ),
    scenario(
        "server-abort",
        "findings",
        "a_server_abort_seen_from_both_ends_is_one_warning",
    ),
    scenario(
        "client-abort",
        "findings",
        "a_client_closing_with_unread_data_is_its_own_info_finding_not_a_server_error",
    ),
    scenario(
        "late-segment",
        "findings",
        "a_late_segment_to_a_closed_port_is_not_a_port_nobody_listens_on",
    ),
    scenario(
        "host-unreachable",
        "findings",
        "icmp_host_unreachable_from_a_router",
    ),
    scenario(
        "nat-idle-reset",
        "idle",
        "nat_that_resets_a_forgotten_flow_warns_first_then_diagnoses_the_break",
    ),
    scenario(
        "tls-sidecar",
        "tls",
        "sidecar_tls_to_a_plaintext_shuffle_port_is_a_tls_mismatch",
    ),
    scenario(
        "tls-plaintext",
        "tls",
        "plaintext_to_a_tls_port_is_a_tls_mismatch",
    ),
    scenario(
        "tls-silent-close",
        "tls",
        "openssl_closing_on_plaintext_after_answering_others_with_tls_is_a_likely_mismatch",
    ),
    scenario(
        "tls-silent-reset",
        "tls",
        "python_ssl_resetting_plaintext_on_an_https_port_is_one_likely_mismatch",
    ),
    scenario(
        "tls-plaintext-server",
        "tls",
        "a_plaintext_server_closing_on_bad_input_is_no_tls_mismatch",
    ),
    scenario(
        "correlate-nat",
        "correlate",
        "clean_connections_through_a_nat_give_nat_in_path_and_nothing_else",
    ),
    scenario(
        "correlate-synack",
        "correlate",
        "synacks_dropped_on_the_way_back_through_a_nat_are_synack_lost_on_return",
    ),
];

/// The test targets the scenarios come from.
const TEST_TARGETS: &[&str] = &["live", "findings", "idle", "tls", "correlate"];

/// Per-scenario limit inside the guest; a test that runs longer is killed and fails.
const SCENARIO_TIMEOUT_S: u64 = 300;
/// A guest that prints no `VMTEST` line for this long is killed (a hung kernel or init).
const SILENCE_LIMIT: Duration = Duration::from_secs(SCENARIO_TIMEOUT_S + 120);
/// A guest whose init has not spoken by then is hung (TCG boots reach it in about 5 s).
const INIT_LIMIT: Duration = Duration::from_secs(120);
/// Boot, modules and the verifier check, before the first scenario.
const BOOT_ALLOWANCE_S: u64 = 240;

/// Guests run at once. Measured on 2 cores (TCG, the default matrix): one at a time 406 s,
/// two at a time 231-256 s; the tests wait on the network and timers more than they compute.
const DEFAULT_JOBS: usize = 2;

/// The arguments of `cargo xtask vm-test` (its help text is on `Task::VmTest` in main.rs).
#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernels to boot (short names); default: 6.1 6.12 5.10
    kernels: Vec<String>,
    /// Guests booted at once.
    #[arg(long, default_value_t = DEFAULT_JOBS)]
    jobs: usize,
    /// Run only these scenarios (repeatable; default: all).
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Kill a guest after this many seconds (default: scales with the scenario count).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

impl VmArgs {
    /// The default matrix, as `cargo xtask test` runs it.
    pub fn default_matrix() -> Self {
        Self {
            kernels: Vec::new(),
            jobs: DEFAULT_JOBS,
            scenarios: Vec::new(),
            timeout: None,
        }
    }
}

pub fn run(args: &VmArgs) -> Result<()> {
    let started = Instant::now();
    let specs = selected_kernels(&args.kernels)?;
    let scenarios = selected_scenarios(&args.scenarios)?;
    ensure_host_packages()?;
    let build = build_tests()?;
    check_scenarios_exist(&build, &scenarios)?;

    let vm_dir = workspace_root().join("target/vm");
    let common = build_common_initramfs(&vm_dir, &build)?;
    let mut guests = Vec::new();
    for spec in specs {
        let kernel = fetch_kernel(&vm_dir, spec)?;
        let initrd = build_kernel_initramfs(&vm_dir, &kernel, &common, &build, &scenarios)?;
        guests.push((kernel, initrd));
    }
    let prepared = started.elapsed();

    let accel = Accel::detect();
    eprintln!("xtask: vm: booting with {}", accel.describe());
    let logs = vm_dir.join("logs");
    fs::create_dir_all(&logs)?;
    let limit = |_kernel: &Kernel| {
        // Each scenario may run twice (see the guest's init), and degraded kernels run a
        // start-up check first.
        let scenario_count = 2 * scenarios.len() as u64 + 1;
        Duration::from_secs(
            args.timeout
                .unwrap_or(BOOT_ALLOWANCE_S + scenario_count * SCENARIO_TIMEOUT_S),
        )
    };
    let results = run_guests(&guests, args.jobs.max(1), |kernel, initrd| {
        let log = logs.join(format!("{}.log", kernel.spec.name));
        boot_guest(kernel, initrd, &log, &accel, limit(kernel))
    });

    // Each is common.cpio + KERNEL.cpio, which stay for inspection (`cpio -t`).
    for (_, initrd) in &guests {
        let _ = fs::remove_file(initrd);
    }
    let reports: Vec<Report> = guests
        .iter()
        .zip(results)
        .map(|((kernel, _), result)| Report::new(kernel, &scenarios, result))
        .collect();
    print_failures(&reports);
    print_summary(&reports, &scenarios);
    eprintln!(
        "xtask: vm: preparation {:.0} s, total {:.0} s",
        prepared.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

fn selected_kernels(names: &[String]) -> Result<Vec<&'static KernelSpec>> {
    let names: Vec<&str> = if names.is_empty() {
        DEFAULT_KERNELS.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut seen = BTreeSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(*name))
        .map(|name| {
            KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                anyhow!("unknown kernel {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

fn selected_scenarios(names: &[String]) -> Result<Vec<&'static Scenario>> {
    if names.is_empty() {
        return Ok(SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                anyhow!("unknown scenario {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Installs the host packages the harness needs when one is missing (apt-get, as root).
fn ensure_host_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|package| !package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "vm-test needs these packages: {} (run as root, or apt-get install them)",
            missing.join(" ")
        );
    }
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).ends_with(" installed"))
}

/// The freshly built binaries, at the paths the test binaries were compiled against.
struct TestBuild {
    tracer: PathBuf,
    tests: BTreeMap<String, PathBuf>,
}

/// Builds the integration tests (the debug build `cargo xtask test` uses) and reads their
/// executables, and the tracer's, from cargo's JSON messages.
fn build_tests() -> Result<TestBuild> {
    let mut cmd = cargo();
    // The root integration tests are built only with this feature (see tracer-user's
    // Cargo.toml).
    cmd.args([
        "test",
        "--package",
        "tracer-user",
        "--features",
        "root-tests",
    ]);
    for target in TEST_TARGETS {
        cmd.args(["--test", target]);
    }
    cmd.args(["--no-run", "--message-format=json"]);
    eprintln!("xtask: running {cmd:?}");
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the integration tests failed ({})", output.status);
    }
    let mut tracer = None;
    let mut tests = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        let is = |kind: &str| {
            kinds
                .as_array()
                .is_some_and(|k| k.iter().any(|v| v == kind))
        };
        if is("bin") && name == "shuffletrace" {
            tracer = Some(PathBuf::from(executable));
        } else if is("test") && TEST_TARGETS.contains(&name) {
            tests.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    let tracer = tracer.context("cargo built no shuffletrace executable")?;
    for target in TEST_TARGETS {
        if !tests.contains_key(*target) {
            bail!("cargo reported no executable for the test target {target}");
        }
    }
    Ok(TestBuild { tracer, tests })
}

/// Fails before booting anything when a scenario names a test that does not exist.
fn check_scenarios_exist(build: &TestBuild, scenarios: &[&Scenario]) -> Result<()> {
    for target in TEST_TARGETS {
        let binary = &build.tests[*target];
        let output = Command::new(binary)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("listing the tests of {}", binary.display()))?;
        let listed = String::from_utf8_lossy(&output.stdout);
        let names: BTreeSet<&str> = listed
            .lines()
            .filter_map(|line| line.strip_suffix(": test"))
            .collect();
        for s in scenarios.iter().filter(|s| s.binary == *target) {
            if !names.contains(s.test) {
                bail!(
                    "scenario {} names {}::{}, which is not a test of that target",
                    s.name,
                    s.binary,
                    s.test
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Kernel packages
