//! Which TCP sockets of a network namespace still exist, asked of the kernel itself
//! (`NETLINK_SOCK_DIAG`, what `ss` uses): the ground truth the slot sweep checks before it
//! drops a slot (see `kernel::stale`). A socket's cookie is unique for the whole boot, so a
//! slot whose cookie is not among its namespace's sockets belongs to a socket that is gone.
//! The question is asked from a short-lived thread that enters the namespace (`setns` moves
//! only the calling thread), so the collector's own threads never leave the host's.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Every TCP state a full socket with a flow slot can be in: all but LISTEN, TIME_WAIT and
/// NEW_SYN_RECV (mini sockets; a full socket's slot never outlives it in those).
const STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 3) // SYN_RECV
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 7) // CLOSE
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 11); // CLOSING
/// Most sockets one answer is read for; a namespace with as many is not judged (the sweep then
/// keeps to its time rule).
pub const MAX_SOCKETS: usize = 1 << 20;

const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_req_v2`.
const REQUEST: usize = 56;
/// `struct inet_diag_msg` up to and including the socket id's cookie.
const MSG_COOKIE_END: usize = 4 + 48;

/// Most namespaces the kernel is asked about in one sweep (the ones with the most
/// candidates first); the others wait for the next sweep, judged by time alone meanwhile.
const MAX_NAMESPACES_ASKED: usize = 64;

/// A slot the sweep asks about: its key (socket cookie), its network namespace, and its
/// owner's pid and thread (where that namespace is likeliest found).
pub type Candidate = (u64, u32, (u32, u32));

/// Per namespace that could be asked, the candidates whose sockets are still there.
pub type Alive = HashMap<u32, HashSet<u64>>;

/// The candidates whose sockets are still there, per namespace that could be asked
/// (`live_cookies`); a namespace missing from the answer could not be (no process is in it,
/// or sock_diag failed: logged).
pub fn live_sockets(host_root: &Path, candidates: &[Candidate]) -> Alive {
    type Wanted = (Vec<(u32, u32)>, HashSet<u64>);
    let mut by_netns: BTreeMap<u32, Wanted> = BTreeMap::new();
    for (key, netns, owner) in candidates {
        let (owners, keys) = by_netns.entry(*netns).or_default();
        owners.push(*owner);
        keys.insert(*key);
    }
    let mut namespaces: Vec<(u32, Wanted)> = by_netns.into_iter().collect();
    namespaces.sort_by_key(|(_, (_, keys))| std::cmp::Reverse(keys.len()));
    let (mut alive, mut failed) = (Alive::new(), Vec::new());
    let mut finder = NamespaceFinder::new(host_root);
    for (netns, (mut owners, keys)) in namespaces.into_iter().take(MAX_NAMESPACES_ASKED) {
        owners.sort_unstable();
        owners.dedup();
        let Some(file) = finder.find(netns, &owners) else {
            continue;
        };
        match live_cookies(&file, &keys) {
            Ok(live) => {
                alive.insert(netns, live);
            }
            Err(e) => failed.push((netns, e)),
        }
    }
    // One line a sweep, however many namespaces failed (a tracer without CAP_SYS_ADMIN cannot
    // enter any but its own).
    if let Some((netns, error)) = failed.first() {
        tracing::warn!(
            "slot sweep: could not list the sockets of {} network namespace(s) (namespace \
             {netns}: {error}); their silent slots are judged by time alone (entering another \
             namespace needs CAP_SYS_ADMIN)",
            failed.len()
        );
    }
    alive
}

/// Which of the cookies `wanted` are TCP sockets (IPv4 or IPv6) of the namespace
/// `netns_file` opens, or why that could not be read. Only those are kept: the memory is the
/// candidates', not the namespace's sockets'.
pub fn live_cookies(netns_file: &Path, wanted: &HashSet<u64>) -> Result<HashSet<u64>, String> {
    let file = File::open(netns_file).map_err(|e| format!("{}: {e}", netns_file.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let own = std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino());
                let here = file
                    .metadata()
                    .is_ok_and(|m| own.is_ok_and(|own| own == m.ino()));
                // SAFETY: setns on a namespace file we opened; it moves this thread only.
                if !here && unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "entering {}: {}",
                        netns_file.display(),
                        std::io::Error::last_os_error()
                    ));
                }
                let (mut live, mut left) = (HashSet::new(), MAX_SOCKETS);
                for family in [libc::AF_INET, libc::AF_INET6] {
                    dump(family as u8, &mut left, &mut |cookie| {
                        if wanted.contains(&cookie) {
                            live.insert(cookie);
                        }
                    })?;
                }
                Ok(live)
            })
            .join()
            .unwrap_or_else(|_| Err("the sock_diag thread failed".to_owned()))
    })
}

/// Finds a file of a network namespace by its inode: the host's own; the thread or process
/// of one of its flows' owners (the likeliest); a namespace mounted under `/run/netns` or
/// `/var/run/netns` (`ip netns`, CNI plugins); or any process's, under `host_root` (that
/// list is read at most once per finder: one finder per sweep).
pub struct NamespaceFinder {
    host_root: PathBuf,
    /// Inode -> a file of it, for every mounted namespace and every process; read on the
    /// first namespace the owners do not lead to.
    index: Option<HashMap<u64, PathBuf>>,
}

impl NamespaceFinder {
    pub fn new(host_root: &Path) -> Self {
        Self {
            host_root: host_root.to_path_buf(),
            index: None,
        }
    }

    /// A file of the namespace `inode`, whose flows `owners` (pid, thread id) opened. None
    /// when none is found (a namespace kept only by its sockets).
    pub fn find(&mut self, inode: u32, owners: &[(u32, u32)]) -> Option<PathBuf> {
        let inode = u64::from(inode);
        let matches = |path: &Path| std::fs::metadata(path).is_ok_and(|meta| meta.ino() == inode);
        let proc_root = self.host_root.join("proc");
        let owned = owners.iter().flat_map(|&(pid, tid)| {
            let process = proc_root.join(pid.to_string());
            [
                process.join(format!("task/{tid}/ns/net")),
                process.join("ns/net"),
            ]
        });
        if let Some(path) = std::iter::once(PathBuf::from("/proc/thread-self/ns/net"))
            .chain(owned)
            .find(|path| matches(path))
        {
            return Some(path);
        }
        let host_root = &self.host_root;
        self.index
            .get_or_insert_with(|| index(host_root))
            .get(&inode)
            .cloned()
    }
}

/// Every mounted namespace's and every process's namespace file, by inode (the first found
/// of each).
fn index(host_root: &Path) -> HashMap<u64, PathBuf> {
    let mounted = ["run/netns", "var/run/netns"]
        .into_iter()
        .filter_map(|dir| std::fs::read_dir(host_root.join(dir)).ok())
        .flat_map(|entries| entries.flatten().map(|entry| entry.path()));
    let processes = std::fs::read_dir(host_root.join("proc"))
        .into_iter()
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_name().as_encoded_bytes()[0].is_ascii_digit())
        .map(|entry| entry.path().join("ns/net"));
    let mut index = HashMap::new();
    for path in mounted.chain(processes) {
        if let Ok(meta) = std::fs::metadata(&path) {
            index.entry(meta.ino()).or_insert(path);
        }
    }
    index
}

/// One dump of `family`'s TCP sockets: `each` gets every socket's cookie; more than `left`
/// sockets (counted down) is an error, found at the first datagram past it.
fn dump(family: u8, left: &mut usize, each: &mut dyn FnMut(u64)) -> Result<(), String> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(format!(
            "opening a sock_diag socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor we just opened and own. A file's read and write are recv and send
    // on a socket (the kernel is the only peer: no address needed).
    let mut socket = File::from(unsafe { <OwnedFd as FromRawFd>::from_raw_fd(fd) });
    socket
        .write_all(&request(family))
        .map_err(|e| format!("asking sock_diag: {e}"))?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match socket.read(&mut buffer) {
            Ok(0) => return Err("sock_diag ended its answer without a DONE".to_owned()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading sock_diag: {e}")),
        };
        let mut counted = |cookie| {
            *left = left.saturating_sub(1);
            each(cookie);
        };
        let parsed = parse(&buffer[..n], &mut counted)?;
        if *left == 0 {
            return Err(format!("{MAX_SOCKETS} sockets or more"));
        }
        if parsed == Parsed::Done {
            return Ok(());
        }
    }
}

/// The dump request: `nlmsghdr` + `inet_diag_req_v2` for `family`'s TCP sockets in `STATES`.
fn request(family: u8) -> [u8; NLMSG_HEADER + REQUEST] {
    let mut message = [0u8; NLMSG_HEADER + REQUEST];
    message[0..4].copy_from_slice(&((NLMSG_HEADER + REQUEST) as u32).to_ne_bytes());
    message[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes());
    message[NLMSG_HEADER] = family;
    message[NLMSG_HEADER + 1] = libc::IPPROTO_TCP as u8;
    message[NLMSG_HEADER + 4..NLMSG_HEADER + 8].copy_from_slice(&STATES.to_ne_bytes());
    message
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    More,
    Done,
}

/// One datagram of the answer: `each` gets its sockets' cookies.
fn parse(mut data: &[u8], each: &mut dyn FnMut(u64)) -> Result<Parsed, String> {
    while data.len() >= NLMSG_HEADER {
        let word = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
        let length = word(0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if length < NLMSG_HEADER || length > data.len() {
            return Err(format!(
                "a sock_diag message of {length} bytes is cut short"
            ));
        }
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(Parsed::Done),
            libc::NLMSG_ERROR => {
                let errno = data
                    .get(NLMSG_HEADER..NLMSG_HEADER + 4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                return Err(format!(
                    "sock_diag refused: {}",
                    std::io::Error::from_raw_os_error(-errno)
                ));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                let body = &data[NLMSG_HEADER..length];
                if body.len() < MSG_COOKIE_END {
                    return Err(format!("a sock_diag answer of {} bytes", body.len()));
                }
                let low = u32::from_ne_bytes(body[44..48].try_into().unwrap());
                let high = u32::from_ne_bytes(body[48..52].try_into().unwrap());
                each(u64::from(low) | (u64::from(high) << 32));
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (length + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    Ok(Parsed::More)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn socket(cookie: u64) -> Vec<u8> {
        let mut body = vec![0u8; 72];
        body[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        body[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        body
    }

    #[test]
    fn the_cookies_of_every_socket_in_a_datagram_are_read_until_done() {
        let mut data = message(SOCK_DIAG_BY_FAMILY, &socket(7));
        data.extend(message(SOCK_DIAG_BY_FAMILY, &socket(0x1_0000_0002)));
        let mut cookies = Vec::new();
        assert_eq!(parse(&data, &mut |c| cookies.push(c)), Ok(Parsed::More));
        data = message(libc::NLMSG_DONE as u16, &[0; 4]);
        assert_eq!(parse(&data, &mut |c| cookies.push(c)), Ok(Parsed::Done));
        assert_eq!(cookies, [7, 0x1_0000_0002]);
    }

    #[test]
    fn an_error_or_a_cut_message_is_an_error_not_an_empty_namespace() {
        let mut cookies = Vec::new();
        let error = message(libc::NLMSG_ERROR as u16, &(-libc::EPERM).to_ne_bytes());
        assert!(parse(&error, &mut |c| cookies.push(c)).is_err());
        let mut cut = message(SOCK_DIAG_BY_FAMILY, &socket(7));
        cut.truncate(40);
        assert!(parse(&cut, &mut |c| cookies.push(c)).is_err());
        assert!(cookies.is_empty());
    }

    /// `SO_COOKIE` (asm-generic/socket.h).
    const SO_COOKIE: libc::c_int = 57;

    fn cookie_of(stream: &std::net::TcpStream) -> u64 {
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt into a u64 of the size given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE");
        cookie
    }

    /// No root needed: the test's own namespace is read without entering it.
    #[test]
    fn both_ends_of_a_live_connection_are_found_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (client_cookie, server_cookie) = (cookie_of(&client), cookie_of(&server));
        let own = Path::new("/proc/thread-self/ns/net");
        let wanted = HashSet::from([client_cookie, server_cookie, u64::MAX]);
        let live = live_cookies(own, &wanted).unwrap();
        assert_eq!(live, HashSet::from([client_cookie, server_cookie]));
        // Both closed: the server (first) ends in TIME_WAIT, a mini socket not listed, and the
        // client's socket is freed once its FIN is acknowledged.
        drop(server);
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if live_cookies(own, &wanted).unwrap().is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still listed after close"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn a_namespace_is_found_by_its_inode_and_an_unknown_one_is_not() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let mut finder = NamespaceFinder::new(Path::new("/"));
        let found = finder.find(own, &[]).unwrap();
        assert_eq!(std::fs::metadata(found).unwrap().ino(), u64::from(own));
        // The index of every process has ours.
        let ours = index(Path::new("/"));
        assert!(ours.contains_key(&u64::from(own)));
        assert_eq!(finder.find(1, &[(u32::MAX, u32::MAX)]), None);
    }

    #[test]
    fn the_request_asks_for_tcp_sockets_of_one_family_in_every_state_a_slot_can_have() {
        let request = request(libc::AF_INET6 as u8);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 72);
        assert_eq!(request[NLMSG_HEADER], libc::AF_INET6 as u8);
        assert_eq!(request[NLMSG_HEADER + 1], libc::IPPROTO_TCP as u8);
        let states = u32::from_ne_bytes(request[20..24].try_into().unwrap());
        assert_eq!(states & (1 << 10), 0, "no listeners");
        assert_eq!(states & (1 << 6), 0, "no TIME_WAIT");
        assert_ne!(states & (1 << 8), 0, "CLOSE_WAIT");
    }
}
