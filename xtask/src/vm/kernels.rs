//! Debian's kernel packages: private apt roots per suite set (the host's apt state is never
//! touched), the current image package resolved through its meta package, unpacked and
//! depmod'ed under target/vm/kernels.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::run_checked;

use super::*;

/// Where a suite lives on the host's Debian mirror.
#[derive(Clone, Copy)]
pub(super) enum Archive {
    Debian,
    Security,
}

/// A set of apt suites with its own sources.list, state and cache under target/vm/apt-NAME.
pub(super) struct AptRoot {
    pub(super) name: &'static str,
    pub(super) suites: &'static [(Archive, &'static str)],
}

pub(super) const BOOKWORM: AptRoot = AptRoot {
    name: "bookworm",
    suites: &[
        (Archive::Debian, "bookworm"),
        (Archive::Debian, "bookworm-updates"),
        (Archive::Security, "bookworm-security"),
    ],
};

/// Debian 12's 6.12 kernels (the ones Debian 13 ships, backported).
pub(super) const BOOKWORM_BACKPORTS: AptRoot = AptRoot {
    name: "bookworm-backports",
    suites: &[(Archive::Debian, "bookworm-backports")],
};

pub(super) const BULLSEYE: AptRoot = AptRoot {
    name: "bullseye",
    suites: &[
        (Archive::Debian, "bullseye"),
        (Archive::Security, "bullseye-security"),
    ],
};

/// A kernel package, unpacked under target/vm/kernels/NAME.
pub(super) struct Kernel {
    pub(super) spec: &'static KernelSpec,
    pub(super) package: String,
    pub(super) version: String,
    /// `uname -r` of the image (its directory under lib/modules).
    pub(super) release: String,
    pub(super) dir: PathBuf,
}

impl Kernel {
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{}", self.release))
    }

    pub(super) fn modules_dir(&self) -> PathBuf {
        modules_dir(&self.dir, &self.release)
    }
}

/// lib/modules/RELEASE of an unpacked package (usr/lib on newer packages).
pub(super) fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let legacy = root.join("lib/modules").join(release);
    if legacy.is_dir() {
        legacy
    } else {
        root.join("usr/lib/modules").join(release)
    }
}

/// Resolves the kernel's current package through its meta package, and downloads and
/// unpacks it unless that exact package version is already unpacked.
pub(super) fn fetch_kernel(vm_dir: &Path, spec: &'static KernelSpec) -> Result<Kernel> {
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

pub(super) fn unpack_kernel(apt: &Apt, dir: &Path, package: &str, version: &str) -> Result<()> {
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
pub(super) fn depmod_base(root: &Path, release: &str) -> PathBuf {
    let modules = modules_dir(root, release);
    modules
        .ancestors()
        .nth(3)
        .map_or_else(|| root.to_path_buf(), Path::to_path_buf)
}

/// The image's release: the one vmlinuz-RELEASE in boot/.
pub(super) fn kernel_release(dir: &Path) -> Result<String> {
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
pub(super) struct Apt {
    pub(super) root: PathBuf,
    pub(super) name: &'static str,
}

impl Apt {
    pub(super) fn new(vm_dir: &Path, apt_root: &AptRoot) -> Result<Self> {
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

    pub(super) fn command(&self, program: &str) -> Command {
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
    pub(super) fn update(&self) -> Result<()> {
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
    pub(super) fn image_package(&self, spec: &KernelSpec) -> Result<(String, String)> {
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
pub(super) fn host_mirrors() -> (String, String) {
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
