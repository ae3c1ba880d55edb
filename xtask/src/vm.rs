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

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::{cargo, is_root, run_checked, workspace_root};

/// The guest's PID 1.
const GUEST_INIT: &str = include_str!("../vm/init");

/// What a kernel of the matrix is expected to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Every scenario must pass.
    Full,
    /// A start-up check (see [`degraded_verdict`]), then the scenarios the kernel can give
    /// (all but `skip`), with `expect_missing` as the programs the start line must miss.
    Degraded,
}

/// Where a suite lives on the host's Debian mirror.
#[derive(Clone, Copy)]
enum Archive {
    Debian,
    Security,
}

/// A set of apt suites with its own sources.list, state and cache under target/vm/apt-NAME.
struct AptRoot {
    name: &'static str,
    suites: &'static [(Archive, &'static str)],
}

const BOOKWORM: AptRoot = AptRoot {
    name: "bookworm",
    suites: &[
        (Archive::Debian, "bookworm"),
        (Archive::Debian, "bookworm-updates"),
        (Archive::Security, "bookworm-security"),
    ],
};

/// Debian 12's 6.12 kernels (the ones Debian 13 ships, backported).
const BOOKWORM_BACKPORTS: AptRoot = AptRoot {
    name: "bookworm-backports",
    suites: &[(Archive::Debian, "bookworm-backports")],
};

const BULLSEYE: AptRoot = AptRoot {
    name: "bullseye",
    suites: &[
        (Archive::Debian, "bullseye"),
        (Archive::Security, "bullseye-security"),
    ],
};

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
        "connect-refused",
        "findings",
        "closed_port_is_connect_refused_and_a_local_reset_on_the_server",
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
    scenario("peer-reset", "findings", "server_abort_is_a_peer_reset"),
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
];

/// The test targets the scenarios come from.
const TEST_TARGETS: &[&str] = &["live", "findings", "idle", "tls"];

/// Kernel modules the tests need (veth pairs, iptables-legacy filter and nat tables with the
/// matches and targets the tests use, conntrack for MASQUERADE / REDIRECT / SO_ORIGINAL_DST,
/// netem). Each must be a module of the kernel or built into it.
const MODULES: &[&str] = &[
    // libcrc32c's soft dependency (nf_conntrack needs libcrc32c): built in on the cloud
    // flavours, a module on the generic ones. modules.dep does not list soft dependencies.
    "crc32c_generic",
    "veth",
    "x_tables",
    "ip_tables",
    "ip6_tables",
    "iptable_filter",
    "ip6table_filter",
    "iptable_nat",
    "xt_tcpudp",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nf_conntrack",
    "nf_nat",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_REDIRECT",
    "xt_owner",
    "xt_statistic",
    "sch_netem",
];

/// Host packages the harness runs (qemu, cpio, depmod, objcopy) or copies into the guest.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "binutils",
    "iproute2",
    "iptables",
    "openssl",
    "python3",
    "procps",
    "xz-utils",
];

/// Host programs copied into the guest at the same path (with the libraries they load).
/// iptables is the legacy variant: its modules are the same on every kernel of the matrix.
const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/kmod",
    "/usr/bin/openssl",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/sysctl",
];

/// Names in the guest's PATH for the programs above: (link, target).
const PROGRAM_LINKS: &[(&str, &str)] = &[
    ("usr/sbin/modprobe", "/usr/bin/kmod"),
    ("usr/sbin/insmod", "/usr/bin/kmod"),
    ("usr/sbin/rmmod", "/usr/bin/kmod"),
    ("usr/sbin/lsmod", "/usr/bin/kmod"),
    ("usr/sbin/depmod", "/usr/bin/kmod"),
    ("usr/sbin/modinfo", "/usr/bin/kmod"),
    ("usr/sbin/iptables", "xtables-legacy-multi"),
    ("usr/sbin/ip6tables", "xtables-legacy-multi"),
    ("usr/sbin/iptables-legacy", "xtables-legacy-multi"),
    ("usr/sbin/ip6tables-legacy", "xtables-legacy-multi"),
    ("usr/sbin/iptables-save", "xtables-legacy-multi"),
    ("usr/sbin/ip6tables-save", "xtables-legacy-multi"),
    ("usr/sbin/iptables-restore", "xtables-legacy-multi"),
    ("usr/sbin/ip6tables-restore", "xtables-legacy-multi"),
    ("usr/bin/sh", "busybox"),
    ("usr/lib/ssl/openssl.cnf", "/etc/ssl/openssl.cnf"),
    ("usr/lib/ssl/certs", "/etc/ssl/certs"),
    ("usr/lib/ssl/private", "/etc/ssl/private"),
];

/// Host files and directories copied as they are (when present).
const HOST_FILES: &[&str] = &[
    "/etc/protocols",
    "/etc/services",
    "/etc/ethertypes",
    "/etc/ssl/openssl.cnf",
    "/etc/iproute2",
    "/usr/lib/x86_64-linux-gnu/tc",
];

/// Parts of the Python standard library no test imports (big, or tests of their own).
const PYTHON_SKIP: &[&str] = &[
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "site-packages",
    "dist-packages",
];

/// Guest files written by the harness: (path, contents).
const GUEST_ETC: &[(&str, &str)] = &[
    ("etc/hostname", "vmtest\n"),
    (
        "etc/hosts",
        "127.0.0.1\tlocalhost vmtest\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n\
         istio-proxy:x:1337:1337:sidecar:/nonexistent:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    (
        "etc/group",
        "root:x:0:\nistio-proxy:x:1337:\nnogroup:x:65534:\n",
    ),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n",
    ),
];

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

/// A kernel package, unpacked under target/vm/kernels/NAME.
struct Kernel {
    spec: &'static KernelSpec,
    package: String,
    version: String,
    /// `uname -r` of the image (its directory under lib/modules).
    release: String,
    dir: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    fn modules_dir(&self) -> PathBuf {
        modules_dir(&self.dir, &self.release)
    }
}

/// lib/modules/RELEASE of an unpacked package (usr/lib on newer packages).
fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let legacy = root.join("lib/modules").join(release);
    if legacy.is_dir() {
        legacy
    } else {
        root.join("usr/lib/modules").join(release)
    }
}

/// Resolves the kernel's current package through its meta package, and downloads and
/// unpacks it unless that exact package version is already unpacked.
fn fetch_kernel(vm_dir: &Path, spec: &'static KernelSpec) -> Result<Kernel> {
    let dir = vm_dir.join("kernels").join(spec.name);
    let stamp = dir.join(".package");
    let apt = Apt::new(vm_dir, spec.apt)?;
    let resolved = apt.update().and_then(|()| apt.image_package(spec));
    let (package, version) = match resolved {
        Ok(found) => found,
        // Offline: the kernel unpacked last time is still a kernel of this series.
        Err(error) if stamp.exists() => {
            eprintln!(
                "xtask: vm: {}: {error:#}; using the cached kernel",
                spec.name
            );
            let cached = fs::read_to_string(&stamp)?;
            let (p, v) = cached
                .trim()
                .split_once(' ')
                .context("malformed kernel stamp")?;
            (p.to_owned(), v.to_owned())
        }
        Err(error) => return Err(error),
    };
    let wanted = format!("{package} {version}");
    let cached = fs::read_to_string(&stamp).unwrap_or_default();
    if cached.trim() != wanted {
        eprintln!("xtask: vm: {}: downloading {package} {version}", spec.name);
        unpack_kernel(&apt, &dir, &package, &version)?;
        fs::write(&stamp, format!("{wanted}\n"))?;
    }
    let release = kernel_release(&dir)?;
    eprintln!(
        "xtask: vm: {}: {package} {version} (release {release})",
        spec.name
    );
    Ok(Kernel {
        spec,
        package,
        version,
        release,
        dir,
    })
}

fn unpack_kernel(apt: &Apt, dir: &Path, package: &str, version: &str) -> Result<()> {
    // Unpacked beside the final directory, and renamed into place only when complete.
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("kernel");
    let partial = dir.with_file_name(format!("{name}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    run_checked(
        apt.command("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(&partial),
    )?;
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", partial.display()))?;
    run_checked(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
    fs::remove_file(&deb)?;
    // The package has no modules.dep (its postinst makes one): make it, to resolve modules.
    let release = kernel_release(&partial)?;
    run_checked(
        Command::new("depmod")
            .arg("-b")
            .arg(depmod_base(&partial, &release))
            .arg(&release),
    )?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir)
        .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))
}

/// The -b argument of depmod for a tree whose modules are in [`modules_dir`].
fn depmod_base(root: &Path, release: &str) -> PathBuf {
    let modules = modules_dir(root, release);
    modules
        .ancestors()
        .nth(3)
        .map_or_else(|| root.to_path_buf(), Path::to_path_buf)
}

/// The image's release: the one vmlinuz-RELEASE in boot/.
fn kernel_release(dir: &Path) -> Result<String> {
    let boot = dir.join("boot");
    let releases: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .collect();
    match releases.as_slice() {
        [release] => Ok(release.clone()),
        _ => bail!(
            "expected one vmlinuz in {}, found {releases:?}",
            boot.display()
        ),
    }
}

/// apt-get / apt-cache with a private sources.list, state and cache: the host's package
/// lists, status and archive cache are left alone (its apt.conf.d and keys still apply).
struct Apt {
    root: PathBuf,
    name: &'static str,
}

impl Apt {
    fn new(vm_dir: &Path, apt_root: &AptRoot) -> Result<Self> {
        let root = vm_dir.join(format!("apt-{}", apt_root.name));
        for sub in [
            "sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(root.join(sub))?;
        }
        let status = root.join("state/status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let (debian, security) = host_mirrors();
        let sources: String = apt_root
            .suites
            .iter()
            .map(|(archive, suite)| {
                let uri = match archive {
                    Archive::Debian => &debian,
                    Archive::Security => &security,
                };
                format!("deb {uri} {suite} main\n")
            })
            .collect();
        let list = root.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&list, sources)?;
            // New sources: the old lists say nothing about them.
            let _ = fs::remove_file(root.join("updated"));
        }
        Ok(Self {
            root,
            name: apt_root.name,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let dir = |sub: &str| self.root.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::Etc::sourcelist", dir("sources.list")),
            ("Dir::Etc::sourceparts", dir("sources.list.d")),
            ("Dir::State", dir("state")),
            ("Dir::State::status", dir("state/status")),
            ("Dir::Cache", dir("cache")),
            // Package lists only: no AppStream metadata, no translations.
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                "false".into(),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                "false".into(),
            ),
            ("Acquire::Languages", "none".into()),
            // Downloads land in target/, which the _apt user may not be able to write.
            ("APT::Sandbox::User", "root".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// apt-get update, at most every few hours (the kernel packages change weekly at most).
    fn update(&self) -> Result<()> {
        let stamp = self.root.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(6 * 3600));
        let has_lists = fs::read_dir(self.root.join("state/lists")).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        });
        if fresh && has_lists {
            return Ok(());
        }
        let output = self
            .command("apt-get")
            .args(["-q", "update"])
            .output()
            .context("starting apt-get update")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        // apt-get update exits 0 on some fetch failures; "E:" or "W: Failed" are failures.
        if !output.status.success() || stderr.contains("E: ") || stderr.contains("W: Failed") {
            bail!("apt-get update ({}) failed: {}", self.name, stderr.trim());
        }
        fs::write(&stamp, "")?;
        Ok(())
    }

    /// The image package (and its version) the kernel's meta package depends on now.
    fn image_package(&self, spec: &KernelSpec) -> Result<(String, String)> {
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", spec.meta])
            .output()
            .context("starting apt-cache show")?;
        if !output.status.success() {
            bail!(
                "apt-cache show {} ({}) failed: {}",
                spec.meta,
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let fields = String::from_utf8_lossy(&output.stdout);
        let depends = fields
            .lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .with_context(|| format!("{} ({}) has no Depends", spec.meta, self.name))?;
        let prefix = format!("linux-image-{}.", spec.series);
        let package = depends
            .split(',')
            .map(|dep| dep.trim().split(' ').next().unwrap_or(""))
            .find(|name| name.starts_with(&prefix))
            .with_context(|| {
                format!(
                    "{} ({}) depends on no {prefix}* package: {depends}",
                    spec.meta, self.name
                )
            })?
            .to_owned();
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", &package])
            .output()
            .context("starting apt-cache show")?;
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(str::to_owned)
            .with_context(|| format!("no version of {package} in {}", self.name))?;
        Ok((package, version))
    }
}

/// The Debian and Debian security archive URIs the host's apt uses (the same mirror serves
/// every suite), or deb.debian.org.
fn host_mirrors() -> (String, String) {
    let mut uris = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("URIs:") {
                uris.extend(rest.split_whitespace().map(str::to_owned));
            } else if let Some(rest) = line.strip_prefix("deb ") {
                // deb [options] URI suite components
                uris.extend(
                    rest.split_whitespace()
                        .skip_while(|w| w.starts_with('['))
                        .skip_while(|w| !w.contains("://"))
                        .take(1)
                        .map(str::to_owned),
                );
            }
        }
    }
    let uris: Vec<String> = uris
        .into_iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let debian = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .cloned()
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| format!("{debian}-security"));
    (debian, security)
}

// ---------------------------------------------------------------------------------------
// The initramfs: one archive common to every kernel (userland, binaries, tools) and one per
// kernel (its modules and the plan), concatenated (the kernel unpacks them in turn).

fn build_common_initramfs(vm_dir: &Path, build: &TestBuild) -> Result<PathBuf> {
    let started = Instant::now();
    let root = vm_dir.join("initramfs/common");
    reset_dir(&root)?;
    make_skeleton(&root)?;
    let mut elves = copy_test_binaries(&root, build)?;
    elves.extend(copy_tools(&root)?);
    copy_libraries(&root, &elves)?;
    install_busybox(&root)?;

    let archive = vm_dir.join("initramfs/common.cpio");
    write_cpio(&root, &archive)?;
    // The tree is in the archive (`cpio -t` lists it); 150 MiB less under target/.
    fs::remove_dir_all(&root)?;
    eprintln!(
        "xtask: vm: common initramfs {} MiB in {:.1} s",
        fs::metadata(&archive)?.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(archive)
}

/// Directories, Debian's merged /usr (so host paths, ldd's too, are valid in the guest as
/// they are), /var/run, /init and /etc.
fn make_skeleton(root: &Path) -> Result<()> {
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "etc",
        "var",
        "vmtest",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        symlink(target, root.join(link))?;
    }
    write_file(&root.join("init"), GUEST_INIT, 0o755)?;
    for (path, contents) in GUEST_ETC {
        write_file(&root.join(path), contents, 0o644)?;
    }
    Ok(())
}

/// The test binaries and the tracer, stripped of debug info, where they were built (the
/// paths compiled into the tests); returns them.
fn copy_test_binaries(root: &Path, build: &TestBuild) -> Result<Vec<PathBuf>> {
    let mut binaries = Vec::new();
    for binary in build.tests.values().chain([&build.tracer]) {
        let dest = guest_path(root, binary);
        fs::create_dir_all(dest.parent().context("binary path")?)?;
        run_checked(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(binary)
                .arg(&dest),
        )?;
        binaries.push(binary.clone());
    }
    // The tests find their helper scripts next to the manifest (tracer-user/../tests/...),
    // and that path only resolves if tracer-user exists.
    let workspace = workspace_root();
    copy_tree(&workspace.join("tests/support"), root, &|_| true)?;
    fs::create_dir_all(guest_path(root, &workspace.join("tracer-user")))?;
    Ok(binaries)
}

/// The programs the tests and the init call, with their data; returns the ELF files among
/// them (for their libraries).
fn copy_tools(root: &Path) -> Result<Vec<PathBuf>> {
    let mut elves = Vec::new();
    for program in HOST_PROGRAMS {
        elves.push(copy_host_file(root, Path::new(program))?);
    }
    for name in ["ip", "tc"] {
        let host = which(name)?;
        fs::copy(&host, root.join("usr/sbin").join(name))?;
        elves.push(host);
    }
    elves.extend(copy_python(root)?);
    let xtables = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    copy_tree(xtables, root, &|_| true)?;
    elves.extend(files_under(xtables)?);
    for file in HOST_FILES {
        copy_tree(Path::new(file), root, &|_| true)?;
    }
    for (link, target) in PROGRAM_LINKS {
        let path = root.join(link);
        fs::create_dir_all(path.parent().context("link path")?)?;
        symlink(target, path)?;
    }
    Ok(elves)
}

/// The per-kernel archive (modules, plan), appended to the common one.
fn build_kernel_initramfs(
    vm_dir: &Path,
    kernel: &Kernel,
    common: &Path,
    build: &TestBuild,
    scenarios: &[&Scenario],
) -> Result<PathBuf> {
    let root = vm_dir.join("initramfs").join(kernel.spec.name);
    reset_dir(&root)?;
    let to_load = stage_modules(kernel, &root)?;
    write_guest_config(&root.join("vmtest"), kernel, build, scenarios, &to_load)?;

    let own = vm_dir
        .join("initramfs")
        .join(format!("{}.cpio", kernel.spec.name));
    write_cpio(&root, &own)?;
    let initrd = vm_dir
        .join("initramfs")
        .join(format!("{}-initrd.cpio", kernel.spec.name));
    let mut out = fs::File::create(&initrd)?;
    for part in [common, own.as_path()] {
        let mut input = fs::File::open(part)?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("appending {}", part.display()))?;
    }
    Ok(initrd)
}

/// What the guest's init reads from /vmtest: the plan (scenario, test binary, test function
/// per line), the modules to load, the mode, the tracer's path and the scenario timeout.
fn write_guest_config(
    dir: &Path,
    kernel: &Kernel,
    build: &TestBuild,
    scenarios: &[&Scenario],
    modules: &[String],
) -> Result<()> {
    let mut plan = String::new();
    for s in scenarios
        .iter()
        .filter(|s| !kernel.spec.skip.contains(&s.name))
    {
        let binary = build
            .tests
            .get(s.binary)
            .with_context(|| format!("no test binary {} for scenario {}", s.binary, s.name))?;
        plan.push_str(&format!("{} {} {}\n", s.name, binary.display(), s.test));
    }
    let mode = match kernel.spec.mode {
        Mode::Full => "full",
        Mode::Degraded => "degraded",
    };
    for (name, contents) in [
        ("plan", plan),
        ("modules", modules.join("\n") + "\n"),
        ("mode", format!("{mode}\n")),
        (
            "expect_missing",
            kernel.spec.expect_missing.join(",") + "\n",
        ),
        ("tracer", format!("{}\n", build.tracer.display())),
        ("scenario_timeout", format!("{SCENARIO_TIMEOUT_S}\n")),
    ] {
        write_file(&dir.join(name), &contents, 0o644)?;
    }
    Ok(())
}

/// Copies MODULES and their dependencies (from the kernel's modules.dep) into the archive
/// root at usr/lib/modules/RELEASE with a modules.dep of their own, so that both the init's
/// modprobe and the kernel's on-demand loading find them. Returns the modules to load.
fn stage_modules(kernel: &Kernel, root: &Path) -> Result<Vec<String>> {
    let source = kernel.modules_dir();
    let deps = parse_modules_dep(&source)?;
    let builtin =
        module_names(&fs::read_to_string(source.join("modules.builtin")).unwrap_or_default());
    let mut files = BTreeSet::new();
    let mut to_load = Vec::new();
    for module in MODULES {
        let name = module.replace('-', "_");
        if let Some((file, needs)) = deps.get(&name) {
            files.insert(file.clone());
            files.extend(needs.iter().cloned());
            to_load.push(name);
        } else if !builtin.contains(&name) {
            bail!(
                "kernel {} ({}) has no module {module}, and it is not built in",
                kernel.spec.name,
                kernel.release
            );
        }
    }
    let dest = root.join("usr/lib/modules").join(&kernel.release);
    for file in &files {
        copy_module(&source.join(file), &dest.join(file))?;
    }
    // What depmod reads besides the modules (modules.builtin.modinfo is newer than 5.2).
    for file in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if source.join(file).exists() {
            fs::copy(source.join(file), dest.join(file))
                .with_context(|| format!("copying {file} of {}", kernel.release))?;
        }
    }
    run_checked(
        Command::new("depmod")
            .arg("-b")
            .arg(root.join("usr"))
            .arg(&kernel.release),
    )?;
    Ok(to_load)
}

/// Copies a module, decompressed: the guest's kmod would otherwise offer the kernel the
/// compressed file first (an "Invalid ELF header" per module), and TCG decompresses slowly.
fn copy_module(source: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().context("module path")?)?;
    let name = source.to_string_lossy();
    let tool = [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")]
        .into_iter()
        .find(|(suffix, _)| name.ends_with(suffix));
    let Some((suffix, tool)) = tool else {
        fs::copy(source, dest).with_context(|| format!("copying {name}"))?;
        return Ok(());
    };
    let plain = dest.with_file_name(
        dest.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .context("module file name")?
            .to_owned()
            + ".ko",
    );
    let out = fs::File::create(&plain)?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(source)
        .stdout(out)
        .status()
        .with_context(|| format!("starting {tool} to decompress {name}"))?;
    if !status.success() {
        bail!("{tool} -dc {name} failed ({status})");
    }
    Ok(())
}

/// modules.dep: module name -> (its file, the files of everything it needs).
fn parse_modules_dep(dir: &Path) -> Result<BTreeMap<String, (String, Vec<String>)>> {
    let path = dir.join("modules.dep");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (file, needs) = line.split_once(':')?;
            let name = module_name(file)?;
            let needs = needs.split_whitespace().map(str::to_owned).collect();
            Some((name, (file.to_owned(), needs)))
        })
        .collect())
}

/// "kernel/net/netfilter/xt_owner.ko.xz" -> "xt_owner" (dashes as underscores, as the
/// kernel names modules).
fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = base.split(".ko").next()?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

fn module_names(list: &str) -> BTreeSet<String> {
    list.lines().filter_map(module_name).collect()
}

/// Python 3 from /usr/bin/python3 with its standard library (minus tests and GUI parts);
/// returns the ELF files whose libraries the guest needs.
fn copy_python(root: &Path) -> Result<Vec<PathBuf>> {
    let python = fs::canonicalize("/usr/bin/python3")
        .context("/usr/bin/python3 is needed in the guest (apt-get install python3)")?;
    let version = python
        .file_name()
        .and_then(|n| n.to_str())
        .context("python3 file name")?
        .to_owned();
    fs::copy(&python, guest_path(root, &python))?;
    symlink(&version, root.join("usr/bin/python3"))?;
    let stdlib = Path::new("/usr/lib").join(&version);
    copy_tree(&stdlib, root, &|path: &Path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|name| !PYTHON_SKIP.contains(&name))
    })?;
    let mut elves = vec![python];
    elves.extend(
        files_under(&stdlib.join("lib-dynload"))?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "so")),
    );
    Ok(elves)
}

/// Copies the shared libraries (and the dynamic loader) the given ELF files load, as ldd
/// resolves them on the host, to the same paths in the guest.
fn copy_libraries(root: &Path, elves: &[PathBuf]) -> Result<()> {
    let output = Command::new("ldd")
        .args(elves)
        .output()
        .context("starting ldd")?;
    let mut libraries = BTreeSet::new();
    // "FILE:" headers, then one tab-indented line per library.
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(line) = line.strip_prefix('\t') else {
            continue;
        };
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.insert(PathBuf::from(path));
        } else if line.contains("not found") {
            eprintln!("xtask: vm: a guest library is missing on the host: {line}");
        }
    }
    for library in libraries {
        copy_host_file(root, &library)?;
    }
    Ok(())
}

/// Static busybox and its applets, as links in /usr/bin and /usr/sbin, where no real
/// program of that name was copied.
fn install_busybox(root: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    fs::copy(busybox, root.join("usr/bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox --list-full")?;
    for applet in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = applet
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "init" && *n != "linuxrc")
        else {
            continue;
        };
        // The real programs, copied before, win over applets of the same name.
        let taken = ["usr/bin", "usr/sbin"]
            .iter()
            .any(|dir| root.join(dir).join(name).symlink_metadata().is_ok());
        if !taken {
            let dir = if applet.contains("sbin/") {
                "usr/sbin"
            } else {
                "usr/bin"
            };
            symlink("/usr/bin/busybox", root.join(dir).join(name))?;
        }
    }
    Ok(())
}

/// The archive of a directory: newc cpio, uncompressed (decompressing costs seconds under
/// TCG), every file owned by root.
fn write_cpio(dir: &Path, archive: &Path) -> Result<()> {
    let out =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let status = Command::new("sh")
        .args([
            "-c",
            "cd \"$1\" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet",
            "sh",
        ])
        .arg(dir)
        .stdout(out)
        .status()
        .context("starting cpio")?;
    if !status.success() {
        bail!("cpio of {} failed ({status})", dir.display());
    }
    Ok(())
}

/// `root` + an absolute host path.
fn guest_path(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// Copies a host file's contents to the same path in the guest; returns the host path.
fn copy_host_file(root: &Path, host: &Path) -> Result<PathBuf> {
    let dest = guest_path(root, host);
    fs::create_dir_all(dest.parent().context("file path")?)?;
    fs::copy(host, &dest).with_context(|| format!("copying {}", host.display()))?;
    Ok(host.to_path_buf())
}

/// Copies a file or a directory tree to the same path in the guest, following symlinks
/// (missing paths and broken links are skipped) and skipping entries `keep` rejects.
fn copy_tree(host: &Path, root: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    if !keep(host) {
        return Ok(());
    }
    let Ok(meta) = fs::metadata(host) else {
        return Ok(()); // a broken symlink
    };
    if meta.is_dir() {
        fs::create_dir_all(guest_path(root, host))?;
        for entry in fs::read_dir(host).with_context(|| format!("listing {}", host.display()))? {
            copy_tree(&entry?.path(), root, keep)?;
        }
        Ok(())
    } else {
        copy_host_file(root, host).map(drop)
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect())
}

fn which(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is needed in the guest but not on the host"))
}

fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().context("file path")?)?;
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Booting

/// How qemu runs the guest.
struct Accel {
    accel: &'static str,
    cpu: &'static str,
}

impl Accel {
    /// KVM where it is real; TCG where /dev/kvm is missing, not usable, or the nested PVM
    /// hypervisor (kvm_pvm), which runs only kernels built for it.
    fn detect() -> Self {
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

    fn describe(&self) -> String {
        format!("-accel {} -cpu {}", self.accel, self.cpu)
    }
}

/// What came back from one guest.
struct GuestRun {
    log: String,
    wall: Duration,
    /// Why the harness killed it, if it did.
    killed: Option<String>,
}

/// Runs `boot` for each guest, `jobs` at a time, returning the results in order.
fn run_guests<F>(guests: &[(Kernel, PathBuf)], jobs: usize, boot: F) -> Vec<Result<GuestRun>>
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
fn boot_guest(
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
fn boot(
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

fn qemu_command(kernel: &Kernel, initrd: &Path, accel: &Accel) -> Command {
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
fn read_console(
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
fn watch(
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

/// What the degraded start-up check captured: `shuffletrace --format json --duration 5s`.
#[derive(Default)]
struct DegradedRun {
    exit_code: Option<i32>,
    stderr: String,
    /// The `start` line from stdout, if one was printed.
    start_line: Option<String>,
}

/// The expectation for a degraded kernel (5.10): either the tracer refuses to run there with
/// a clear message (non-zero exit before any start line, stderr naming the kernel version),
/// or it runs degraded (exit 0 and a `start` line whose `missing` is not empty). Never exit 0
/// without a start line; a tracer killed after the guest's timeout (`exit_code` None) fails.
/// Edit this function to change what 5.10 must do.
fn degraded_verdict(run: &DegradedRun, series: &str, release: &str) -> Result<String, String> {
    let Some(code) = run.exit_code else {
        return Err("the tracer did not finish (killed at the guest's timeout, or not run)".into());
    };
    match (code, run.start_line.as_deref()) {
        (0, None) => Err("exit 0 without a start line".into()),
        (0, Some(start)) => {
            let missing = serde_json::from_str::<Value>(start)
                .ok()
                .and_then(|start| start["missing"].as_array().map(Vec::len));
            match missing {
                Some(n) if n > 0 => Ok(format!("ran degraded: {n} program(s) missing")),
                Some(_) => Err("exit 0 with nothing missing: not degraded".into()),
                None => Err(format!("a start line without a missing array: {start}")),
            }
        }
        (code, Some(_)) => Err(format!("exit {code} after it had started")),
        (code, None) => {
            let names_kernel = mentions_version(&run.stderr, series)
                || (!release.is_empty() && run.stderr.contains(release));
            if names_kernel {
                Ok(format!("refused with exit {code}, naming the kernel"))
            } else {
                Err(format!(
                    "exit {code}, but stderr does not name the kernel ({series} / {release})"
                ))
            }
        }
    }
}

/// Whether `text` names kernel `series` ("5.10") as a version of its own: not inside a
/// longer number such as a log timestamp's "15.103".
fn mentions_version(text: &str, series: &str) -> bool {
    text.match_indices(series).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + series.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A scenario's result in one guest.
struct Outcome {
    passed: bool,
    seconds: f64,
    /// The test's output when it failed.
    output: String,
}

/// One kernel's results, read from its serial log.
struct Report {
    kernel: String,
    package: String,
    mode: Mode,
    release: Option<String>,
    boot_s: Option<f64>,
    wall: Option<Duration>,
    outcomes: BTreeMap<String, Outcome>,
    /// Problems that fail the kernel whatever the scenarios say.
    problems: Vec<String>,
    notes: Vec<String>,
    degraded: Option<Result<String, String>>,
    log_path: String,
}

impl Report {
    fn new(kernel: &Kernel, scenarios: &[&Scenario], run: Result<GuestRun>) -> Self {
        let mut report = Self {
            kernel: kernel.spec.name.to_owned(),
            package: format!("{} {}", kernel.package, kernel.version),
            mode: kernel.spec.mode,
            release: None,
            boot_s: None,
            wall: None,
            outcomes: BTreeMap::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            degraded: None,
            log_path: format!("target/vm/logs/{}.log", kernel.spec.name),
        };
        let run = match run {
            Ok(run) => run,
            Err(error) => {
                report.problems.push(format!("{error:#}"));
                return report;
            }
        };
        report.wall = Some(run.wall);
        if let Some(reason) = &run.killed {
            report.problems.push(format!("guest killed: {reason}"));
        }
        report.read_log(&run.log);
        if !run.log.contains("VMTEST-DONE") && run.killed.is_none() {
            report
                .problems
                .push("the guest stopped before finishing (see the log's end)".into());
        }
        for s in scenarios
            .iter()
            .filter(|s| !kernel.spec.skip.contains(&s.name))
        {
            if !report.outcomes.contains_key(s.name) {
                report
                    .problems
                    .push(format!("scenario {} did not run", s.name));
            }
        }
        match kernel.spec.mode {
            Mode::Full => {}
            Mode::Degraded => {
                let run = parse_degraded(&run.log);
                let release = report.release.clone().unwrap_or_default();
                report.notes.push(format!(
                    "exit code {}; start line: {}",
                    run.exit_code
                        .map_or_else(|| "none".to_owned(), |c| c.to_string()),
                    run.start_line.as_deref().unwrap_or("none")
                ));
                for line in run.stderr.lines() {
                    report.notes.push(format!("stderr: {line}"));
                }
                report.degraded = Some(degraded_verdict(&run, kernel.spec.series, &release));
            }
        }
        report
    }

    fn read_log(&mut self, log: &str) {
        // "VMTEST-VERIFIER NAME verified in 1.2ms (N instructions processed)"
        let verified: Vec<String> = log
            .lines()
            .filter_map(|l| l.strip_prefix("VMTEST-VERIFIER "))
            .filter_map(|l| {
                let name = l.split_whitespace().next()?;
                let insns = l.rsplit_once('(')?.1.split_whitespace().next()?;
                Some(format!("{name} {insns}"))
            })
            .collect();
        if !verified.is_empty() {
            self.notes.push(format!(
                "verifier, instructions processed: {}",
                verified.join(", ")
            ));
        }
        let mut lines = log.lines();
        while let Some(line) = lines.next() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("VMTEST-BOOT") => {
                    for word in words {
                        if let Some(r) = word.strip_prefix("release=") {
                            self.release = Some(r.to_owned());
                        } else if let Some(u) = word.strip_prefix("uptime=") {
                            self.boot_s = u.parse().ok();
                        }
                    }
                }
                Some("VMTEST-MODULE-FAIL") => {
                    let module = words.next().unwrap_or("?");
                    let error = words.collect::<Vec<_>>().join(" ");
                    self.problems
                        .push(format!("module {module} did not load: {error}"));
                }
                Some("VMTEST-START") => {
                    let start = line.trim_start_matches("VMTEST-START").trim();
                    self.notes.push(format!("tracer start line: {start}"));
                }
                Some("VMTEST-RETRY-OUTPUT-BEGIN") => {
                    // The first failure of a scenario that was run again: a note with its
                    // reason; the second run decides.
                    let scenario = words.next().unwrap_or("").to_owned();
                    let end = format!("VMTEST-RETRY-OUTPUT-END {scenario}");
                    let output: Vec<&str> = lines.by_ref().take_while(|l| *l != end).collect();
                    self.notes.push(format!(
                        "{scenario} failed once and was run again: {}",
                        failure_reason(&output.join("\n"))
                    ));
                }
                Some("VMTEST-OUTPUT-BEGIN") => {
                    let scenario = words.next().unwrap_or("").to_owned();
                    let end = format!("VMTEST-OUTPUT-END {scenario}");
                    let output: Vec<&str> = lines.by_ref().take_while(|l| *l != end).collect();
                    self.outcomes.insert(
                        scenario,
                        Outcome {
                            passed: false,
                            seconds: 0.0,
                            output: output.join("\n"),
                        },
                    );
                }
                Some("VMTEST") => {
                    let (Some(scenario), Some(verdict), Some(seconds)) =
                        (words.next(), words.next(), words.next())
                    else {
                        continue;
                    };
                    let outcome =
                        self.outcomes
                            .entry(scenario.to_owned())
                            .or_insert_with(|| Outcome {
                                passed: false,
                                seconds: 0.0,
                                output: String::new(),
                            });
                    outcome.passed = verdict == "PASS";
                    outcome.seconds = seconds.parse().unwrap_or(0.0);
                }
                _ => {}
            }
        }
    }

    fn passed(&self) -> bool {
        self.problems.is_empty()
            && self.outcomes.values().all(|o| o.passed)
            && self.degraded.as_ref().is_none_or(Result::is_ok)
    }
}

fn parse_degraded(log: &str) -> DegradedRun {
    let mut run = DegradedRun::default();
    let mut lines = log.lines();
    while let Some(line) = lines.next() {
        if let Some(code) = line.strip_prefix("VMTEST-DEGRADED-EXIT ") {
            run.exit_code = code.trim().parse().ok();
        } else if line == "VMTEST-STDERR-BEGIN" {
            let stderr: Vec<&str> = lines
                .by_ref()
                .take_while(|l| *l != "VMTEST-STDERR-END")
                .collect();
            run.stderr = stderr.join("\n");
        } else if let Some(start) = line.strip_prefix("VMTEST-DEGRADED-START ") {
            run.start_line = (start.trim() != "none").then(|| start.trim().to_owned());
        }
    }
    run
}

/// Why a test failed, in one line: the panic message (with an assertion's left and right),
/// or the output's last line.
fn failure_reason(output: &str) -> String {
    const MAX: usize = 240;
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let reason = match lines.iter().position(|l| l.contains("panicked at")) {
        // "thread 'x' panicked at file:line:col:", the message on the next line, then (after
        // whatever the message dumps) an assertion's "left: ..." and "right: ...".
        Some(i) => {
            let rest = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with("note:") && !l.starts_with("failures:"));
            let mut parts: Vec<&str> = lines.get(i + 1).copied().into_iter().collect();
            parts.extend(rest.filter(|l| l.starts_with("left:") || l.starts_with("right:")));
            parts.join(" ")
        }
        None => lines
            .iter()
            .rev()
            .find(|l| !l.is_empty())
            .map_or_else(|| "no output".to_owned(), |l| (*l).to_owned()),
    };
    if reason.chars().count() > MAX {
        let cut: String = reason.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        reason
    }
}

/// Lines of a failing test's output shown on the terminal (the rest is in the log).
const SHOWN_OUTPUT_LINES: usize = 40;

fn print_failures(reports: &[Report]) {
    for report in reports {
        for (scenario, outcome) in report.outcomes.iter().filter(|(_, o)| !o.passed) {
            eprintln!("\n==== {} / {scenario}: FAIL ====", report.kernel);
            let lines: Vec<&str> = outcome.output.lines().collect();
            for line in lines.iter().take(SHOWN_OUTPUT_LINES) {
                eprintln!("  {line}");
            }
            if lines.len() > SHOWN_OUTPUT_LINES {
                eprintln!(
                    "  ... {} more lines in {}",
                    lines.len() - SHOWN_OUTPUT_LINES,
                    report.log_path
                );
            }
        }
        for problem in &report.problems {
            eprintln!("\n==== {}: {problem} ({})", report.kernel, report.log_path);
        }
    }
}

fn print_summary(reports: &[Report], scenarios: &[&Scenario]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((label.to_owned(), reports.iter().map(f).collect()));
    };
    row("kernel", &|r| r.kernel.clone());
    row("uname -r", &|r| {
        r.release.clone().unwrap_or_else(|| "?".into())
    });
    row("boot (to /init)", &|r| {
        r.boot_s.map_or_else(|| "?".into(), |s| format!("{s:.1} s"))
    });
    row("wall", &|r| {
        r.wall
            .map_or_else(|| "?".into(), |w| format!("{:.0} s", w.as_secs_f64()))
    });
    for s in scenarios {
        row(s.name, &|r| match (r.mode, r.outcomes.get(s.name)) {
            (Mode::Degraded, None) => "skipped".into(),
            (Mode::Full, None) => "NOT RUN".into(),
            (_, Some(o)) => {
                let verdict = if o.passed { "PASS" } else { "FAIL" };
                format!("{verdict} {:.1} s", o.seconds)
            }
        });
    }
    row("degraded check", &|r| match &r.degraded {
        None => "-".into(),
        Some(Ok(_)) => "PASS".into(),
        Some(Err(_)) => "FAIL".into(),
    });
    row("result", &|r| {
        if r.passed() { "PASS" } else { "FAIL" }.into()
    });

    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| rows.iter().map(|(_, c)| c[i].len()).max().unwrap_or(0) + 2)
        .collect();
    println!();
    for (label, cells) in &rows {
        let mut line = format!("{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}"));
        }
        println!("{}", line.trim_end());
    }
    println!();

    for report in reports {
        println!("{} ({}):", report.kernel, report.package);
        for note in &report.notes {
            println!("  {note}");
        }
        match &report.degraded {
            Some(Ok(why)) => println!("  degraded check passed: {why}"),
            Some(Err(why)) => println!("  degraded check FAILED: {why}"),
            None => {}
        }
        for (scenario, outcome) in report.outcomes.iter().filter(|(_, o)| !o.passed) {
            println!("  {scenario}: {}", failure_reason(&outcome.output));
        }
        for problem in &report.problems {
            println!("  {problem}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_drop_path_and_compression() {
        assert_eq!(
            module_name("kernel/net/netfilter/xt_owner.ko.xz").as_deref(),
            Some("xt_owner")
        );
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name("kernel/x/.ko"), None);
    }

    #[test]
    fn every_scenario_names_a_built_target() {
        for s in SCENARIOS {
            assert!(TEST_TARGETS.contains(&s.binary), "{}", s.name);
        }
        for name in DEFAULT_KERNELS {
            assert!(KERNELS.iter().any(|k| k.name == *name), "{name}");
        }
    }

    #[test]
    fn failure_reason_is_the_panic_message_with_left_and_right() {
        let output = "running 1 test\n\
            thread 't' (12) panicked at tests/live.rs:100:9:\n\
            assertion `left == right` failed: target 10.0.0.2:7337\n\
            {\"type\":\"start\"}\n\
            \n\
            \x20 left: Null\n\
            \x20right: \"NO_SOCKET\"\n\
            note: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            failure_reason(output),
            "assertion `left == right` failed: target 10.0.0.2:7337 left: Null right: \"NO_SOCKET\""
        );
        assert_eq!(
            failure_reason("test x ...\n(killed after 300 s)\n"),
            "(killed after 300 s)"
        );
    }

    #[test]
    fn degraded_log_is_read_back() {
        let log = "VMTEST-DEGRADED-EXIT 1\nVMTEST-STDERR-BEGIN\nError: kernel 5.10 lacks x\n\
            VMTEST-STDERR-END\nVMTEST-DEGRADED-START none\n";
        let run = parse_degraded(log);
        assert_eq!(run.exit_code, Some(1));
        assert_eq!(run.stderr, "Error: kernel 5.10 lacks x");
        assert_eq!(run.start_line, None);
    }

    #[test]
    fn degraded_verdict_accepts_a_clear_refusal_or_a_degraded_run_only() {
        let run = |code, stderr: &str, start: Option<&str>| DegradedRun {
            exit_code: code,
            stderr: stderr.to_owned(),
            start_line: start.map(str::to_owned),
        };
        let verdict = |r: &DegradedRun| degraded_verdict(r, "5.10", "5.10.0-46-cloud-amd64");
        let started = r#"{"type":"start","missing":[]}"#;
        assert!(verdict(&run(Some(1), "kernel 5.10.0-46", Some(started))).is_err());
        assert!(verdict(&run(Some(1), "needs 5.15, this is 5.10.0-46", None)).is_ok());
        assert!(verdict(&run(Some(1), "failed", None)).is_err());
        // A timestamp is not a kernel version.
        assert!(verdict(&run(Some(1), "12:41:15.103Z failed", None)).is_err());
        let degraded = r#"{"type":"start","missing":[{"tracepoint":"x"}]}"#;
        assert!(verdict(&run(Some(0), "", Some(degraded))).is_ok());
        let complete = r#"{"type":"start","missing":[]}"#;
        assert!(verdict(&run(Some(0), "", Some(complete))).is_err());
        assert!(verdict(&run(Some(0), "", None)).is_err());
        assert!(verdict(&run(None, "", None)).is_err());
    }
}
