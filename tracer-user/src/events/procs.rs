//! Who a flow belongs to, as an SRE names it: the kernel gives the *thread* that ran the
//! socket call (`comm` is a thread's name: a JVM shows up as `shuffle-client-`, a Netty
//! thread cut to 15 characters); this names the *process* (its own name and, for a JVM, its
//! main class) from `/proc`, and finds the processes that were already listening on watched
//! ports when tracing started (the kernel sees listen() only from then on).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::events::Owner;

/// A process, named for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessName {
    /// The process's own name (its main thread's `comm`): `java`, `python3`, `socat`.
    pub name: String,
    /// For a JVM, the main class (or jar) it runs: `org.apache.spark.deploy.ExternalShuffleService`.
    pub main_class: Option<String>,
}

impl ProcessName {
    /// `java (org.apache.hive.service.server.HiveServer2)`, or the name alone.
    pub fn display(&self) -> String {
        match &self.main_class {
            Some(class) => format!("{} ({class})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Most of a command line read (a JVM's class path can be far longer; the main class comes
/// after the options, which is why the limit is generous).
const MAX_CMDLINE: u64 = 256 * 1024;

/// Options of the `java` launcher that take the next argument as their value.
const JAVA_OPTIONS_WITH_VALUE: &[&str] = &[
    "-cp",
    "-classpath",
    "--class-path",
    "-p",
    "--module-path",
    "--upgrade-module-path",
    "--add-modules",
    "--add-opens",
    "--add-exports",
    "--add-reads",
    "--enable-native-access",
    "--limit-modules",
    "--patch-module",
];

/// The main class of a `java` command line (argv without argv[0]): the first argument that
/// is not an option; for `-jar`, the jar's file name; through Hadoop's `RunJar` (how Hive
/// starts HiveServer2 and the metastore) and Spark's `SparkSubmit --class`, the class they run.
pub fn java_main_class<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut args = args.into_iter();
    let main = loop {
        let arg = args.next()?;
        if JAVA_OPTIONS_WITH_VALUE.contains(&arg) {
            args.next();
        } else if matches!(arg, "-jar" | "-m" | "--module") {
            // A jar's file name; a module's main class (MODULE/CLASS).
            let target = args.next()?;
            return Some(target.rsplit('/').next().unwrap_or(target).to_owned());
        } else if !arg.starts_with('-') {
            break arg;
        }
    };
    let rest: Vec<&str> = args.collect();
    let launched = match main {
        // RunJar JAR CLASS ARGS...
        "org.apache.hadoop.util.RunJar" => rest.get(1).copied(),
        // SparkSubmit ... --class CLASS ...
        "org.apache.spark.deploy.SparkSubmit" => rest
            .iter()
            .position(|arg| *arg == "--class")
            .and_then(|at| rest.get(at + 1).copied()),
        _ => None,
    };
    Some(
        launched
            .filter(|class| !class.starts_with('-'))
            .unwrap_or(main)
            .to_owned(),
    )
}

/// Reads the process `pid`'s name and, for a JVM, its main class.
pub fn read_process(proc_root: &Path, pid: u32) -> Option<ProcessName> {
    let dir = proc_root.join(pid.to_string());
    let name = read_comm(&dir)?;
    let main_class = if name == "java" || name.starts_with("java") {
        read_cmdline(&dir.join("cmdline")).and_then(|cmdline| {
            let args: Vec<&str> = cmdline.split('\0').filter(|a| !a.is_empty()).collect();
            java_main_class(args.iter().skip(1).copied())
        })
    } else {
        None
    };
    Some(ProcessName { name, main_class })
}

/// A process's name (its main thread's comm), from its /proc directory.
fn read_comm(dir: &Path) -> Option<String> {
    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

fn read_cmdline(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Processes looked up at most (pid -> name); past it the stale entries go, then all.
const MAX_PROCESSES: usize = 4096;
/// How long a name is trusted: a pid is reused only after the process exits.
const PROCESS_TTL_NS: u64 = 60_000_000_000;

/// Names processes, each looked up once a minute at most. Bounded by `MAX_PROCESSES`.
pub struct ProcessNames {
    proc_root: PathBuf,
    known: HashMap<u32, (Option<Arc<ProcessName>>, u64)>,
}

impl ProcessNames {
    pub fn new(host_root: &Path) -> Self {
        Self {
            proc_root: host_root.join("proc"),
            known: HashMap::new(),
        }
    }

    /// The process `pid` (None when it is gone or unreadable).
    pub fn of(&mut self, pid: u32, now_ns: u64) -> Option<Arc<ProcessName>> {
        if let Some((name, at)) = self.known.get(&pid)
            && now_ns.saturating_sub(*at) < PROCESS_TTL_NS
        {
            return name.clone();
        }
        if self.known.len() >= MAX_PROCESSES {
            self.known
                .retain(|_, (_, at)| now_ns.saturating_sub(*at) < PROCESS_TTL_NS);
            if self.known.len() >= MAX_PROCESSES {
                self.known.clear();
            }
        }
        let name = read_process(&self.proc_root, pid).map(Arc::new);
        self.known.insert(pid, (name.clone(), now_ns));
        name
    }

    /// Names the owner's process (once per owner: a named owner is left as it is).
    pub fn name(&mut self, owner: &mut Owner, now_ns: u64) {
        if owner.process.is_none() {
            owner.process = self.of(owner.pid, now_ns);
        }
    }
}

/// A process listening on a watched port when tracing started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub netns: u32,
    pub port: u16,
    pub pid: u32,
    pub uid: u32,
    /// The process's name (its main thread's comm).
    pub comm: String,
}

/// The listening TCP sockets of one network namespace, from its `net/tcp` or `net/tcp6`
/// text: socket inode -> local port, for the ports `watched` accepts.
pub fn listening_inodes(table: &str, watched: &dyn Fn(u16) -> bool) -> HashMap<u64, u16> {
    let mut inodes = HashMap::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        if *state != "0A" {
            continue;
        }
        let Some(port) = local
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if let Ok(inode) = inode.parse::<u64>()
            && inode != 0
            && watched(port)
        {
            inodes.insert(inode, port);
        }
    }
    inodes
}

/// The processes under `proc_root` (its numeric entries).
pub fn pids(proc_root: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The network namespace (inode) of process `pid`.
pub fn netns_of(proc_root: &Path, pid: u32) -> Option<u32> {
    let link = std::fs::read_link(proc_root.join(format!("{pid}/ns/net"))).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The processes of each network namespace (inode -> pids), from one pass over `/proc`:
/// what start-up reads each namespace through (its listeners, its addresses). Only the
/// namespaces `keep` accepts are kept.
pub fn pids_by_netns(proc_root: &Path, keep: &dyn Fn(u32) -> bool) -> HashMap<u32, Vec<u32>> {
    let mut by_netns: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in pids(proc_root) {
        if let Some(netns) = netns_of(proc_root, pid).filter(|&netns| keep(netns)) {
            by_netns.entry(netns).or_default().push(pid);
        }
    }
    by_netns
}

/// Every process listening on a watched port now, in the namespaces of `by_netns` (see
/// `pids_by_netns`): a namespace's socket table is read once (through its first process),
/// and only the processes of namespaces with a watched listener have their descriptors read.
pub fn existing_listeners(
    proc_root: &Path,
    by_netns: &HashMap<u32, Vec<u32>>,
    watched: &dyn Fn(u16) -> bool,
) -> Vec<Listener> {
    let mut found = Vec::new();
    for (&netns, pids) in by_netns {
        let mut inodes = HashMap::new();
        for table in ["tcp", "tcp6"] {
            if let Ok(text) =
                std::fs::read_to_string(proc_root.join(format!("{}/net/{table}", pids[0])))
            {
                inodes.extend(listening_inodes(&text, watched));
            }
        }
        let mut owned = HashSet::new();
        for &pid in pids {
            if owned.len() == inodes.len() {
                break;
            }
            let Ok(fds) = std::fs::read_dir(proc_root.join(format!("{pid}/fd"))) else {
                continue;
            };
            for fd in fds.flatten() {
                let Some(inode) = std::fs::read_link(fd.path())
                    .ok()
                    .as_deref()
                    .and_then(socket_inode)
                else {
                    continue;
                };
                let Some(&port) = inodes.get(&inode) else {
                    continue;
                };
                // A listener shared by several processes (a pre-fork server) is named by the first.
                if !owned.insert(inode) {
                    continue;
                }
                let dir = proc_root.join(pid.to_string());
                found.push(Listener {
                    netns,
                    port,
                    pid,
                    uid: std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(0),
                    comm: read_comm(&dir).unwrap_or_default(),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_main_classes() {
        let spark = [
            "-cp",
            "/opt/spark/conf/:/opt/spark/jars/*",
            "-Xmx1g",
            "org.apache.spark.deploy.ExternalShuffleService",
        ];
        assert_eq!(
            java_main_class(spark).as_deref(),
            Some("org.apache.spark.deploy.ExternalShuffleService")
        );
        let hive = [
            "-Xmx256m",
            "-Dproc_hiveserver2",
            "org.apache.hadoop.util.RunJar",
            "/opt/hive/lib/hive-service-4.0.1.jar",
            "org.apache.hive.service.server.HiveServer2",
            "--hiveconf",
            "x=y",
        ];
        assert_eq!(
            java_main_class(hive).as_deref(),
            Some("org.apache.hive.service.server.HiveServer2")
        );
        let submit = [
            "-cp",
            "x",
            "org.apache.spark.deploy.SparkSubmit",
            "--master",
            "local",
            "--class",
            "com.example.Job",
            "job.jar",
        ];
        assert_eq!(java_main_class(submit).as_deref(), Some("com.example.Job"));
        assert_eq!(
            java_main_class(["-Xss1m", "-jar", "/srv/app/thrift-server.jar"]).as_deref(),
            Some("thrift-server.jar")
        );
        assert_eq!(java_main_class(["-version"]), None);
    }

    #[test]
    fn listening_sockets_of_watched_ports() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1CA9 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   2: 0100007F:2710 0100007F:A0B4 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
   3: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
";
        let inodes = listening_inodes(table, &|port| port == 7337 || port == 10000);
        assert_eq!(inodes, HashMap::from([(31337, 7337), (4242, 10000)]));
    }

    #[test]
    fn this_process_is_named_and_its_listener_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        let name = read_process(Path::new("/proc"), me).unwrap();
        assert!(!name.name.is_empty());
        let proc_root = Path::new("/proc");
        let found = existing_listeners(proc_root, &pids_by_netns(proc_root, &|_| true), &|p| {
            p == port
        });
        let mine: Vec<_> = found.iter().filter(|l| l.port == port).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert_eq!(mine[0].pid, me);
        assert_eq!(Some(mine[0].netns), netns_of(Path::new("/proc"), me));
    }
}
