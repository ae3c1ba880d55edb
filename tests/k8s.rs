//! Root integration tests of Kubernetes attribution: a real process in a real cgroup v2
//! directory shaped like a kubelet pod slice, in its own network namespace, against a prepared
//! `--host-root` tree with `var/log/pods/<ns>_<pod>_<uid>`; and the DaemonSet's own command
//! line, run as it is in the manifest.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{Topology, Tracer, connect, dump, findings};

const NAMESPACE: &str = "spark-jobs";
const POD: &str = "etl-exec-1";
const CONTAINER: &str = "spark-kubernetes-executor";
const UID: &str = "8d3e5f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
const CONTAINER_ID: &str = "4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0";

/// The cgroup v2 mount point on this machine.
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2" && mount.split_whitespace().nth(3)? == "/")
                .then(|| PathBuf::from(mount.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup v2 hierarchy")
}

/// A kubelet-style pod slice with one containerd scope (systemd driver); removed on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn new() -> Self {
        let root = cgroup2_root();
        let uid = UID.replace('-', "_");
        let parts = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid}.slice"),
            format!("cri-containerd-{CONTAINER_ID}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut path = root;
        for part in parts {
            path = path.join(part);
            let _ = std::fs::create_dir(&path);
            assert!(path.is_dir(), "cgroup {}", path.display());
            dirs.push(path.clone());
        }
        Self { dirs }
    }

    fn procs(&self) -> PathBuf {
        self.dirs.last().unwrap().join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `<root>/proc` (the real one) and the kubelet's log directories for the pod.
fn host_root() -> PathBuf {
    // One per test: the tests of this file run at once.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let root = std::env::temp_dir().join(format!("st-hostroot-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let pod_dir = root
        .join("var/log/pods")
        .join(format!("{NAMESPACE}_{POD}_{UID}"))
        .join(CONTAINER);
    std::fs::create_dir_all(&pod_dir).unwrap();
    std::fs::write(pod_dir.join("0.log"), "").unwrap();
    let containers = root.join("var/log/containers");
    std::fs::create_dir_all(&containers).unwrap();
    std::os::unix::fs::symlink(
        pod_dir.join("0.log"),
        containers.join(format!("{POD}_{NAMESPACE}_{CONTAINER}-{CONTAINER_ID}.log")),
    )
    .unwrap();
    std::os::unix::fs::symlink("/proc", root.join("proc")).unwrap();
    root
}

/// The "executor": a process that joins the pod's cgroup, enters the pod's netns, makes a
/// refused connect, says so, and stays a while (so its netns can be found).
fn executor(cgroup: &PodCgroup, netns: &str, target: SocketAddr) -> Child {
    let script = format!(
        "import socket, sys, time\n\
         s = socket.socket()\n\
         try:\n    s.connect(('{}', {}))\n\
         except OSError as e:\n    print('refused', flush=True)\n\
         time.sleep(4)\n",
        target.ip(),
        target.port()
    );
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec ip netns exec {netns} /usr/bin/python3 -c \"$0\"",
            cgroup.procs().display()
        ))
        .arg(script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the executor")
}

fn names_the_pod(value: &Value, with_container: bool) -> bool {
    value["pod"] == POD
        && value["namespace"] == NAMESPACE
        && (!with_container || value["container"] == CONTAINER)
}

#[test]
fn events_and_findings_name_the_pod() {
    let topo = Topology::new();
    let cgroup = PodCgroup::new();
    let root = host_root();
    let tracer = Tracer::start_with(&[
        "--ports",
        "7337,10000",
        "--host-root",
        root.to_str().unwrap(),
    ]);
    let target = SocketAddr::new(topo.server_v4, 7337);
    let mut child = executor(&cgroup, &topo.client.name, target);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "refused");
    // Someone connects to the pod's closed port 10000: the RST the pod's stack sends has no
    // process, only the pod's network namespace.
    let pod_ip = std::process::Command::new("ip")
        .args([
            "-n",
            &topo.client.name,
            "-4",
            "-o",
            "addr",
            "show",
            "scope",
            "global",
        ])
        .output()
        .unwrap();
    let pod_ip = String::from_utf8(pod_ip.stdout).unwrap();
    let pod_ip = pod_ip
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap()
        .to_owned();
    let into_pod: SocketAddr = format!("{pod_ip}:10000").parse().unwrap();
    topo.server
        .run("st-driver", move || assert!(connect(into_pod).is_err()))
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let lines = tracer.stop();
    let _ = child.wait();
    std::fs::remove_dir_all(&root).unwrap();

    let refused: Vec<&Value> = findings(&lines, "connect_refused")
        .into_iter()
        .filter(|f| f["dst"] == target.to_string().as_str())
        .collect();
    assert_eq!(refused.len(), 1, "{}", dump(&lines));
    assert!(
        names_the_pod(refused[0], true),
        "finding names the pod: {}",
        dump(&lines)
    );
    let flow_events: Vec<&Value> = lines
        .iter()
        .filter(|v| v["type"] == "event" && v["dst"] == target.to_string().as_str())
        .collect();
    assert!(!flow_events.is_empty());
    for event in flow_events {
        assert!(names_the_pod(event, true), "event names the pod: {event}");
    }
    let reset = lines
        .iter()
        .find(|v| v["event"] == "reset_sent" && v["src"] == into_pod.to_string().as_str())
        .unwrap_or_else(|| panic!("the pod's RST: {}", dump(&lines)));
    assert!(
        reset["pid"].is_null(),
        "no process for a RST without a socket"
    );
    assert!(names_the_pod(reset, false), "netns -> pod: {reset}");
    // Flows outside any pod carry no pod fields.
    let outside = lines
        .iter()
        .find(|v| v["type"] == "event" && v["thread"] == "st-driver")
        .unwrap_or_else(|| panic!("the driver's flow: {}", dump(&lines)));
    assert!(outside.get("pod").is_none(), "{outside}");
}

/// The DaemonSet's args, as written in the manifest (one quoted item per line).
fn daemonset_args() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        let Some(item) = line.trim().strip_prefix("- ") else {
            break;
        };
        args.push(item.trim_matches('"').to_owned());
    }
    assert!(args.len() > 10, "args found: {args:?}");
    args
}

#[test]
fn the_daemonset_command_line_runs() {
    let dir = std::env::temp_dir().join(format!("st-daemonset-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = host_root();
    // The manifest's args, with the kustomize defaults for $(VARS) and this machine's paths
    // for the two host paths.
    let args: Vec<String> = daemonset_args()
        .into_iter()
        .map(|arg| match arg.as_str() {
            "$(SHUFFLETRACE_PORTS)" => "7337,10000,10001,4040,9083,443,8443".into(),
            "$(SHUFFLETRACE_NAT_IDLE)" => "aws".into(),
            "$(SHUFFLETRACE_TRACE_MAX_SIZE)" => "64MiB".into(),
            "$(SHUFFLETRACE_TRACE_KEEP)" => "8".into(),
            "/var/lib/shuffletrace" => dir.to_str().unwrap().into(),
            "/host" => root.to_str().unwrap().into(),
            "0.0.0.0:9464" => format!("127.0.0.1:{}", 21000 + std::process::id() % 1000),
            _ => arg,
        })
        .collect();
    assert!(!args.iter().any(|a| a.contains("$(")), "{args:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(&args)
        .args(["--duration", "2s"])
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let start: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(start["type"], "start");
    assert_eq!(start["node"], "node-a");
    assert_eq!(start["missing"], Value::Array(vec![]), "{stderr}");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(files.len(), 1, "one trace file");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}
