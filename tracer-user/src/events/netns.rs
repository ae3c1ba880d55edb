//! `--netns`: which network namespaces a run watches, named the ways an SRE has at hand (an
//! inode number from `lsns` or a trace line, a namespace file such as `/proc/PID/ns/net` or
//! `/run/netns/NAME`, or a pod name), resolved once at start to the inode numbers the kernel
//! programs compare. Lets two tracers on one machine stand for two nodes, each seeing only
//! its own namespaces.

use std::{collections::BTreeSet, os::unix::fs::MetadataExt, path::Path};

/// Most namespaces `--netns` may name (the kernel's `NETNS_FILTER` table has as many slots).
pub const MAX_NETNS: usize = 64;

/// `NS_GET_NSTYPE`: `_IO(0xb7, 0x3)` (linux/nsfs.h).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The inode numbers the `--netns` values name; an error says which value is wrong and why.
pub fn resolve(values: &[String], host_root: &Path) -> Result<BTreeSet<u32>, String> {
    let mut inodes = BTreeSet::new();
    for value in values {
        inodes.extend(resolve_one(value, host_root)?);
    }
    if inodes.len() > MAX_NETNS {
        return Err(format!(
            "--netns names {} network namespaces; at most {MAX_NETNS} can be watched",
            inodes.len()
        ));
    }
    Ok(inodes)
}

fn resolve_one(value: &str, host_root: &Path) -> Result<Vec<u32>, String> {
    if value.is_empty() {
        return Err("--netns: empty value; give an inode number, a namespace file or a pod".into());
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<u32>() {
            Ok(inode) if inode != 0 => Ok(vec![inode]),
            _ => Err(format!(
                "--netns {value}: not a namespace inode number (1 to {})",
                u32::MAX
            )),
        };
    }
    if value.starts_with('/') || value.starts_with('.') {
        return namespace_file(Path::new(value)).map(|inode| vec![inode]);
    }
    pod_namespaces(value, host_root)
}

/// The inode of a network namespace file (nsfs), checked to be one.
fn namespace_file(path: &Path) -> Result<u32, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("--netns {shown}: {e}"))?;
    let inode = file
        .metadata()
        .map_err(|e| format!("--netns {shown}: {e}"))?
        .ino();
    use std::os::fd::AsRawFd;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(format!(
            "--netns {shown}: not a network namespace file (give /proc/PID/ns/net or \
             /run/netns/NAME)"
        ));
    }
    u32::try_from(inode).map_err(|_| format!("--netns {shown}: inode {inode} out of range"))
}

/// The network namespace of a pod (`POD` or `NAMESPACE/POD`), through its processes under
/// `--host-root`.
fn pod_namespaces(value: &str, host_root: &Path) -> Result<Vec<u32>, String> {
    let (namespace, pod) = match value.split_once('/') {
        Some((namespace, pod)) => (Some(namespace), pod),
        None => (None, value),
    };
    let proc_root = host_root.join("proc");
    let mut attributor = super::k8s::Attributor::new(host_root);
    let mut found: BTreeSet<(String, u32)> = BTreeSet::new();
    for pid in super::procs::pids(&proc_root) {
        let Some(pod_ref) = attributor.by_pid(pid) else {
            continue;
        };
        if pod_ref.pod != pod || namespace.is_some_and(|ns| ns != pod_ref.namespace) {
            continue;
        }
        if let Some(inode) = super::procs::netns_of(&proc_root, pid) {
            found.insert((pod_ref.namespace.clone(), inode));
        }
    }
    let namespaces: BTreeSet<&str> = found.iter().map(|(ns, _)| ns.as_str()).collect();
    if namespaces.len() > 1 {
        return Err(format!(
            "--netns {value}: pods of that name run in namespaces {}; say which as NAMESPACE/POD",
            namespaces.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if found.is_empty() {
        return Err(format!(
            "--netns {value}: no running pod of that name on this node (looked for its \
             processes under {}; a value starting with / or . is a namespace file, digits an \
             inode number)",
            proc_root.display()
        ));
    }
    Ok(found.into_iter().map(|(_, inode)| inode).collect())
}

/// Most addresses a start line lists.
pub const MAX_ADDRESSES: usize = 1024;

/// The addresses of the watched network namespaces, but loopback and link-local: what
/// `correlate` matches a client's destination against to know which traced node it was
/// meant to reach. Read at start: a namespace named by its file is entered on a short-lived
/// thread (an `ip netns` namespace may hold no process), the others (`by_netns`, see
/// `procs::pids_by_netns`) through a process in each (`/proc/PID/net/fib_trie` and
/// `if_inet6`).
pub fn local_addresses(
    proc_root: &Path,
    by_netns: &std::collections::HashMap<u32, Vec<u32>>,
    files: &[std::path::PathBuf],
) -> Vec<std::net::IpAddr> {
    let mut addresses = BTreeSet::new();
    let mut seen_netns = BTreeSet::new();
    for file in files {
        if let Ok(inode) = namespace_file(file) {
            seen_netns.insert(inode);
            addresses.extend(addresses_inside(file));
        }
    }
    for (netns, pids) in by_netns {
        if addresses.len() >= MAX_ADDRESSES {
            break;
        }
        if seen_netns.insert(*netns) {
            addresses.extend(read_addresses(&proc_root.join(format!("{}/net", pids[0]))));
        }
    }
    addresses.into_iter().take(MAX_ADDRESSES).collect()
}

/// The addresses in a `/proc/.../net` directory.
fn read_addresses(net: &Path) -> BTreeSet<std::net::IpAddr> {
    let mut addresses = BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string(net.join("fib_trie")) {
        addresses.extend(fib_local_v4(&text).into_iter().map(std::net::IpAddr::V4));
    }
    if let Ok(text) = std::fs::read_to_string(net.join("if_inet6")) {
        addresses.extend(global_v6(&text).into_iter().map(std::net::IpAddr::V6));
    }
    addresses
}

/// The addresses of the namespace a file names, read from a thread that enters it.
fn addresses_inside(file: &Path) -> BTreeSet<std::net::IpAddr> {
    let Ok(ns) = std::fs::File::open(file) else {
        return BTreeSet::new();
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on this thread only, which ends right after; the fd is valid.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return BTreeSet::new();
                }
                read_addresses(Path::new("/proc/thread-self/net"))
            })
            .join()
            .unwrap_or_default()
    })
}

/// The host-local IPv4 addresses of a `fib_trie` (`|-- ADDR` followed by `/32 host LOCAL`).
pub fn fib_local_v4(text: &str) -> BTreeSet<std::net::Ipv4Addr> {
    let mut last = None;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr.parse::<std::net::Ipv4Addr>().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(addr) = last
            && !addr.is_loopback()
        {
            out.insert(addr);
        }
    }
    out
}

/// The global-scope IPv6 addresses of an `if_inet6` (scope `00`).
pub fn global_v6(text: &str) -> BTreeSet<std::net::Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "00" || fields[0].len() != 32 {
                return None;
            }
            u128::from_str_radix(fields[0], 16)
                .ok()
                .map(std::net::Ipv6Addr::from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_from_proc_net() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                    +-- 10.0.1.0/24 2 0 2\n        |-- 10.0.1.0\n           /24 link UNICAST\n        \
                    |-- 10.0.1.2\n           /32 host LOCAL\n  |-- 127.0.0.1\n     /32 host LOCAL\n\
                    Local:\n        |-- 10.0.1.2\n           /32 host LOCAL\n";
        assert_eq!(
            fib_local_v4(trie).into_iter().collect::<Vec<_>>(),
            ["10.0.1.2".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                     fe800000000000000000000000000001 02 40 20 80     eth0\n\
                     fd000000000000000000000000000002 02 40 00 80     eth0\n";
        assert_eq!(
            global_v6(inet6).into_iter().collect::<Vec<_>>(),
            ["fd00::2".parse::<std::net::Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn inode_numbers_files_and_bad_values() {
        let root = Path::new("/");
        assert_eq!(
            resolve(&["4026531840".into()], root).unwrap(),
            [4026531840].into()
        );
        assert!(resolve(&["0".into()], root).unwrap_err().contains("inode"));
        assert!(
            resolve(&["99999999999".into()], root)
                .unwrap_err()
                .contains("inode")
        );
        // This process's own namespace file names the namespace it is in.
        let own = super::super::procs::netns_of(Path::new("/proc"), std::process::id());
        if let Some(own) = own {
            assert_eq!(
                resolve(&["/proc/self/ns/net".into()], root).unwrap(),
                [own].into()
            );
        }
        let not_ns = resolve(&["/proc/self/ns/../status".into()], root).unwrap_err();
        assert!(not_ns.contains("not a network namespace file"), "{not_ns}");
        let missing = resolve(&["/run/netns/no-such-namespace".into()], root).unwrap_err();
        assert!(missing.contains("no-such-namespace"), "{missing}");
        if Path::new("/proc/self/ns/uts").exists() {
            let uts = resolve(&["/proc/self/ns/uts".into()], root).unwrap_err();
            assert!(uts.contains("not a network namespace"), "{uts}");
        }
        let too_many: Vec<String> = (1..=65).map(|n| n.to_string()).collect();
        assert!(resolve(&too_many, root).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn a_pod_that_is_not_there_is_an_error() {
        let empty = std::env::temp_dir().join(format!("netns-test-{}", std::process::id()));
        std::fs::create_dir_all(empty.join("proc")).unwrap();
        let error = resolve(&["spark-shuffle-0".into()], &empty).unwrap_err();
        assert!(error.contains("no running pod"), "{error}");
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
