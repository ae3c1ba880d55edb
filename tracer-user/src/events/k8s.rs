//! Kubernetes attribution: which pod and container a flow belongs to, from the owning
//! process's cgroup (`/proc/<pid>/cgroup`), or from its network namespace alone (events in
//! softirq context: netns inode -> a process in it -> its cgroup), then pod UID -> namespace
//! and name from `/var/log/pods/<namespace>_<pod>_<uid>/` and container ID -> name from
//! `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`. Everything is read under
//! `--host-root` (default `/`; `/host` when the host is mounted into the container).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// A pod, and the container within it when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: Option<String>,
}

/// Pod UID and container ID from one cgroup path, for the systemd and cgroupfs drivers and
/// the containerd, CRI-O and Docker runtimes.
pub fn parse_cgroup_path(path: &str) -> Option<(String, Option<String>)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let kubepods = segments.iter().position(|s| s.starts_with("kubepods"))?;
    let (index, uid) = segments
        .iter()
        .enumerate()
        .skip(kubepods)
        .find_map(|(i, segment)| pod_uid(segment).map(|uid| (i, uid)))?;
    let container = segments.get(index + 1).and_then(|s| container_id(s));
    Some((uid, container))
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = name
        .rsplit_once("-pod")
        .map(|(_, uid)| uid)
        .or_else(|| name.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    let valid = uid.len() >= 8 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, or a bare `<id>`.
fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "cri-o-",
        "containerd-",
    ]
    .iter()
    .find_map(|prefix| name.strip_prefix(prefix))
    .unwrap_or(name);
    let valid = id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit());
    valid.then(|| id.to_owned())
}

/// Pod UID and container ID from the text of `/proc/<pid>/cgroup` (v2 `0::` line first,
/// then any v1 line).
pub fn parse_proc_cgroup(text: &str) -> Option<(String, Option<String>)> {
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .collect();
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    v2.into_iter().chain(paths).find_map(parse_cgroup_path)
}

/// `<namespace>_<pod>_<uid>` directory names of /var/log/pods, by UID.
pub fn parse_pod_dir(name: &str) -> Option<(String, String, String)> {
    let (rest, uid) = name.rsplit_once('_')?;
    let (namespace, pod) = rest.split_once('_')?;
    Some((namespace.to_owned(), pod.to_owned(), uid.to_owned()))
}

/// `<pod>_<namespace>_<container>-<id>.log` names of /var/log/containers.
pub fn parse_container_log(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (_, container_and_id) = stem.rsplit_once('_')?;
    let (container, id) = container_and_id.rsplit_once('-')?;
    Some((id.to_owned(), container.to_owned()))
}

/// How long indexes of /var/log/pods and /proc/*/ns/net are trusted before a miss re-reads
/// them (a miss within this time is answered from the index: no re-scan storms).
const REFRESH: Duration = Duration::from_secs(10);
/// Entries in the per-process cache.
const PROCESS_CACHE: usize = 4096;

pub struct Attributor {
    root: PathBuf,
    /// pod UID -> (namespace, pod); container ID -> name.
    pods: HashMap<String, (String, String)>,
    containers: HashMap<String, String>,
    pods_read: Option<Instant>,
    /// netns inode -> a pid in it.
    netns_pids: HashMap<u32, u32>,
    netns_read: Option<Instant>,
    /// pid -> attribution (None: not in a pod).
    by_pid: HashMap<u32, Option<Arc<PodRef>>>,
}

impl Attributor {
    pub fn new(host_root: &Path) -> Self {
        Self {
            root: host_root.to_path_buf(),
            pods: HashMap::new(),
            containers: HashMap::new(),
            pods_read: None,
            netns_pids: HashMap::new(),
            netns_read: None,
            by_pid: HashMap::new(),
        }
    }

    fn stale(read: Option<Instant>) -> bool {
        read.is_none_or(|at| at.elapsed() >= REFRESH)
    }

    fn read_pods(&mut self) {
        if !Self::stale(self.pods_read) {
            return;
        }
        self.pods_read = Some(Instant::now());
        self.pods.clear();
        self.containers.clear();
        if let Ok(dir) = std::fs::read_dir(self.root.join("var/log/pods")) {
            for entry in dir.flatten() {
                if let Some((namespace, pod, uid)) =
                    entry.file_name().to_str().and_then(parse_pod_dir)
                {
                    self.pods.insert(uid, (namespace, pod));
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(self.root.join("var/log/containers")) {
            for entry in dir.flatten() {
                if let Some((id, container)) =
                    entry.file_name().to_str().and_then(parse_container_log)
                {
                    self.containers.insert(id, container);
                }
            }
        }
    }

    fn read_netns(&mut self) {
        if !Self::stale(self.netns_read) {
            return;
        }
        self.netns_read = Some(Instant::now());
        self.netns_pids.clear();
        let proc_root = self.root.join("proc");
        for pid in super::procs::pids(&proc_root) {
            if let Some(inode) = super::procs::netns_of(&proc_root, pid) {
                self.netns_pids.entry(inode).or_insert(pid);
            }
        }
    }

    fn lookup_pod(&mut self, uid: &str, container: Option<&str>) -> Option<PodRef> {
        if !self.pods.contains_key(uid) {
            self.read_pods();
        }
        let (namespace, pod) = self.pods.get(uid)?.clone();
        if container.is_some_and(|id| !self.containers.contains_key(id)) {
            self.read_pods();
        }
        Some(PodRef {
            namespace,
            pod,
            uid: uid.to_owned(),
            container: container.and_then(|id| self.containers.get(id).cloned()),
        })
    }

    /// The pod of a process, by its cgroup.
    pub fn by_pid(&mut self, pid: u32) -> Option<Arc<PodRef>> {
        if let Some(known) = self.by_pid.get(&pid) {
            return known.clone();
        }
        let text = std::fs::read_to_string(self.root.join(format!("proc/{pid}/cgroup"))).ok()?;
        let found = parse_proc_cgroup(&text)
            .and_then(|(uid, container)| self.lookup_pod(&uid, container.as_deref()))
            .map(Arc::new);
        if self.by_pid.len() >= PROCESS_CACHE {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, found.clone());
        found
    }

    /// The pod whose network namespace this is (any process in it will do).
    pub fn by_netns(&mut self, netns: u32) -> Option<Arc<PodRef>> {
        if netns == 0 {
            return None;
        }
        if !self.netns_pids.contains_key(&netns) {
            self.read_netns();
        }
        let pid = *self.netns_pids.get(&netns)?;
        self.by_pid(pid).map(|pod| {
            // The netns is the pod's; no one container owns it.
            Arc::new(PodRef {
                container: None,
                ..(*pod).clone()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8d3e5f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const ID: &str = "4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0";

    #[test]
    fn cgroup_paths_of_each_driver_and_runtime() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // systemd driver: containerd, CRI-O, Docker; burstable, besteffort, guaranteed
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"),
            // cgroupfs driver: containerd/Docker (bare id), CRI-O
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/crio-{ID}"),
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
        ];
        for path in cases {
            assert_eq!(
                parse_cgroup_path(&path),
                Some((UID.to_owned(), Some(ID.to_owned()))),
                "{path}"
            );
        }
        // The pod slice itself (a process in the pause sandbox's parent): pod, no container.
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}")),
            Some((UID.to_owned(), None))
        );
        for not_a_pod in [
            "/user.slice/user-0.slice/session-1.scope",
            "/",
            "/system.slice/containerd.service",
        ] {
            assert_eq!(parse_cgroup_path(not_a_pod), None, "{not_a_pod}");
        }
    }

    #[test]
    fn proc_cgroup_files_v2_and_v1() {
        let v2 = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse_proc_cgroup(&v2).unwrap().0, UID);
        let v1 = format!(
            "12:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        assert_eq!(
            parse_proc_cgroup(&v1),
            Some((UID.to_owned(), Some(ID.to_owned())))
        );
        assert_eq!(parse_proc_cgroup("0::/user.slice\n"), None);
    }

    #[test]
    fn log_directory_names() {
        assert_eq!(
            parse_pod_dir(&format!("spark-jobs_etl-exec-1_{UID}")),
            Some(("spark-jobs".into(), "etl-exec-1".into(), UID.into()))
        );
        assert_eq!(
            parse_container_log(&format!(
                "etl-exec-1_spark-jobs_spark-kubernetes-executor-{ID}.log"
            )),
            Some((ID.into(), "spark-kubernetes-executor".into()))
        );
        assert_eq!(parse_pod_dir("nounderscores"), None);
    }
}
