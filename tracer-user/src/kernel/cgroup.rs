//! The cgroup v2 root the cgroup_skb programs attach to: found in mountinfo (through the host's
//! pid 1 in a container), or mounted.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};

/// The mount point of the cgroup v2 hierarchy, from a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        // Only a mount of the hierarchy's root covers every socket on the host.
        (root == "/").then(|| PathBuf::from(point.replace("\\040", " ")))
    })
}

/// Finds the cgroup v2 root, or mounts one (hosts with only v1 mounted still have v2). In a
/// container (`--host-root` other than `/`), the host's root is reached through the host's
/// pid 1 (`<host-root>/proc/1/root/...`): the container's own cgroup mount may show only its
/// cgroup namespace, and programs attached there would miss the rest of the node.
pub fn cgroup2_root(host_root: &Path) -> Result<PathBuf> {
    if host_root != Path::new("/")
        && let Ok(mountinfo) = std::fs::read_to_string(host_root.join("proc/1/mountinfo"))
        && let Some(path) = cgroup2_mount(&mountinfo)
    {
        let on_host = host_root
            .join("proc/1/root")
            .join(path.strip_prefix("/").unwrap_or(&path));
        if on_host.is_dir() {
            return Ok(on_host);
        }
    }
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(path) = cgroup2_mount(&mountinfo) {
        return Ok(path);
    }
    let path = Path::new("/run/shuffletrace/cgroup2");
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(anyhow!(
            "no cgroup v2 hierarchy is mounted and mounting one at {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(path.to_path_buf())
}

pub fn attach_cgroup_skb(
    ebpf: &mut Ebpf,
    program: &str,
    root: &Path,
    direction: CgroupSkbAttachType,
) -> Result<()> {
    let cgroup =
        std::fs::File::open(root).with_context(|| format!("opening cgroup {}", root.display()))?;
    let prog: &mut CgroupSkb = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} not in the object"))?
        .try_into()?;
    // Attached through a BPF link (kernels >= 5.7), which takes no flags and always runs beside
    // other programs on the same cgroup; "Single" is aya's flag-less mode.
    prog.attach(&cgroup, direction, CgroupAttachMode::Single)
        .with_context(|| format!("attaching to cgroup {}", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_root_found_in_mountinfo() {
        let hybrid = "30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                      32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let container = "40 30 0:27 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(container), None, "a sub-tree is not the root");
        assert_eq!(
            cgroup2_mount("32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
    }
}
