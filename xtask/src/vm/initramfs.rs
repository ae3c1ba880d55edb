//! The guest's self-contained initramfs: busybox, bash and the tools the tests call with
//! their libraries, the kernel's modules, and the freshly built tracer and test binaries at
//! the paths compiled into them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{run_checked, workspace_root};

use super::*;

/// The guest's PID 1.
pub(super) const GUEST_INIT: &str = include_str!("../../vm/init");

/// Kernel modules the tests need (veth pairs, iptables-legacy filter and nat tables with the
/// matches and targets the tests use, conntrack for MASQUERADE / REDIRECT / SO_ORIGINAL_DST,
/// netem, and sock_diag's TCP sockets for the slot sweep). Each must be a module of the kernel
/// or built into it.
pub(super) const MODULES: &[&str] = &[
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
    "inet_diag",
    "tcp_diag",
];

/// Host packages the harness runs (qemu, cpio, depmod, objcopy) or copies into the guest.
pub(super) const HOST_PACKAGES: &[&str] = &[
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
pub(super) const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/bash",
    "/usr/bin/kmod",
    "/usr/bin/openssl",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/sbin/sysctl",
];

/// Names in the guest's PATH for the programs above: (link, target).
pub(super) const PROGRAM_LINKS: &[(&str, &str)] = &[
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
pub(super) const HOST_FILES: &[&str] = &[
    "/etc/protocols",
    "/etc/services",
    "/etc/ethertypes",
    "/etc/ssl/openssl.cnf",
    "/etc/iproute2",
    "/usr/lib/x86_64-linux-gnu/tc",
];

/// Parts of the Python standard library no test imports (big, or tests of their own).
pub(super) const PYTHON_SKIP: &[&str] = &[
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
pub(super) const GUEST_ETC: &[(&str, &str)] = &[
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

pub(super) fn build_common_initramfs(vm_dir: &Path, build: &TestBuild) -> Result<PathBuf> {
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
pub(super) fn make_skeleton(root: &Path) -> Result<()> {
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
pub(super) fn copy_test_binaries(root: &Path, build: &TestBuild) -> Result<Vec<PathBuf>> {
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
pub(super) fn copy_tools(root: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn build_kernel_initramfs(
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
pub(super) fn write_guest_config(
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
pub(super) fn stage_modules(kernel: &Kernel, root: &Path) -> Result<Vec<String>> {
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
pub(super) fn copy_module(source: &Path, dest: &Path) -> Result<()> {
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
pub(super) fn parse_modules_dep(dir: &Path) -> Result<BTreeMap<String, (String, Vec<String>)>> {
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
pub(super) fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = base.split(".ko").next()?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

pub(super) fn module_names(list: &str) -> BTreeSet<String> {
    list.lines().filter_map(module_name).collect()
}

/// Python 3 from /usr/bin/python3 with its standard library (minus tests and GUI parts);
/// returns the ELF files whose libraries the guest needs.
pub(super) fn copy_python(root: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn copy_libraries(root: &Path, elves: &[PathBuf]) -> Result<()> {
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
pub(super) fn install_busybox(root: &Path) -> Result<()> {
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
pub(super) fn write_cpio(dir: &Path, archive: &Path) -> Result<()> {
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
pub(super) fn guest_path(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

/// Copies a host file's contents to the same path in the guest; returns the host path.
pub(super) fn copy_host_file(root: &Path, host: &Path) -> Result<PathBuf> {
    let dest = guest_path(root, host);
    fs::create_dir_all(dest.parent().context("file path")?)?;
    fs::copy(host, &dest).with_context(|| format!("copying {}", host.display()))?;
    Ok(host.to_path_buf())
}

/// Copies a file or a directory tree to the same path in the guest, following symlinks
/// (missing paths and broken links are skipped) and skipping entries `keep` rejects.
pub(super) fn copy_tree(host: &Path, root: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
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

pub(super) fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect())
}

pub(super) fn which(name: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is needed in the guest but not on the host"))
}

pub(super) fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

pub(super) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().context("file path")?)?;
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Booting
