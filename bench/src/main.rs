//! Load generator for `cargo xtask bench` (loopback only).
//!
//! ```text
//! stload churn   PORT COUNT THREADS   open and close COUNT connections to a local listener
//! stload refused PORT COUNT THREADS   COUNT connects to a port nobody listens on
//! stload bulk    PORT SECONDS         one connection streaming data for SECONDS
//! stload hold    PORT COUNT SECONDS [quiet]
//!                                     COUNT concurrent connections held open for SECONDS, each
//!                                     sending one byte (none with `quiet`)
//! ```
//! Each prints one line: `ops=<n> seconds=<s> rate=<ops per s> connections=<n>` (bulk: bytes
//! and MB/s); `connections` counts every connection made, the wake-ups that stop the
//! listener included, so the bench can check that the tracer accounted for each one.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Connections per holding process (two descriptors each, both ends being local).
const HOLD_PER_PROCESS: u64 = 8_000;

fn usage() -> ! {
    eprintln!(
        "usage: stload churn|refused PORT COUNT THREADS | bulk PORT SECONDS | hold PORT COUNT SECONDS [quiet]"
    );
    std::process::exit(2);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

/// A `serve` listener: its main acceptor thread and how many acceptor threads it runs.
struct Server {
    thread: thread::JoinHandle<()>,
    acceptors: usize,
}

/// A listener that accepts connections until told to stop: drops them at once, or drains
/// them (bulk). Blocking accept; `stop` is followed by one connection per acceptor thread.
fn serve(
    listener: TcpListener,
    drain: bool,
    hold: bool,
    echo_byte: bool,
    stop: Arc<AtomicBool>,
) -> Server {
    use std::os::fd::AsRawFd as _;
    // A deep accept queue: std's default backlog overflows under churn (dropped SYNs are
    // retried after a second and would dominate the measurement).
    // SAFETY: listen(2) again on our listening socket only changes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    // A second acceptor, so accepting keeps up with two connecting threads.
    let second = !hold && !drain;
    if second {
        let (listener, stop) = (listener.try_clone().expect("clone listener"), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
    }
    let thread = thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            if drain {
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            } else if hold {
                // Answer the client's byte: data both ways, nothing left unread (closing a
                // socket with unread data is an abort, a RST: an anomaly, not a held flow).
                let mut byte = [0u8; 1];
                if echo_byte && conn.read_exact(&mut byte).is_ok() {
                    let _ = conn.write_all(&byte);
                }
                held.push(conn);
            }
            // Otherwise dropped (closed) at once, so the 4-tuple is free for the next round.
        }
    });
    Server {
        thread,
        acceptors: 1 + usize::from(second),
    }
}

/// Stops a `serve` listener; returns the wake-up connections that were made. One per
/// acceptor thread: a wake-up more would find the listener closing (refused, or accepted by
/// the kernel and then reset: a flow the bench would count as a connection, or miss).
fn stop_server(addr: SocketAddr, stop: &AtomicBool, server: Server) -> u64 {
    stop.store(true, Ordering::Relaxed);
    let made = (0..server.acceptors)
        .filter(|_| TcpStream::connect(addr).is_ok())
        .count() as u64;
    server.thread.join().unwrap();
    made
}

/// Raises the open-file limit as far as the kernel allows (`hold` needs two descriptors
/// per connection): to fs.nr_open as root, else to the hard limit.
fn raise_nofile() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let wanted = libc::rlimit {
        rlim_cur: nr_open,
        rlim_max: nr_open,
    };
    // SAFETY: plain syscalls with valid structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            let mut current = std::mem::zeroed::<libc::rlimit>();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut current);
            current.rlim_cur = current.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &current);
        }
    }
}

fn parallel(count: u64, threads: u64, work: impl Fn() + Send + Sync + 'static) -> Duration {
    let work = Arc::new(work);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let work = work.clone();
            let share = count / threads + u64::from(t < count % threads);
            thread::spawn(move || (0..share).for_each(|_| work()))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or_else(|| usage());
    let port: u16 = arg(&args, 2);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    raise_nofile();
    match mode {
        "churn" | "refused" => {
            let (count, threads): (u64, u64) = (arg(&args, 3), arg(&args, 4));
            let stop = Arc::new(AtomicBool::new(false));
            let server = (mode == "churn").then(|| {
                serve(
                    TcpListener::bind(addr).expect("bind"),
                    false,
                    false,
                    false,
                    stop.clone(),
                )
            });
            let open = mode == "churn";
            let took = parallel(count, threads.max(1), move || {
                let result = TcpStream::connect(addr);
                assert_eq!(result.is_ok(), open, "connect to {addr}: {result:?}");
                if let Ok(mut stream) = result {
                    // A clean close: the server closes first (its side keeps the TIME_WAIT,
                    // so client ports are free at once); we read its FIN, then close.
                    let mut byte = [0u8; 1];
                    let _ = stream.read(&mut byte);
                }
            });
            let wakeups = server.map_or(0, |server| stop_server(addr, &stop, server));
            println!(
                "ops={count} seconds={:.3} rate={:.0} connections={}",
                took.as_secs_f64(),
                count as f64 / took.as_secs_f64(),
                if open { count + wakeups } else { 0 }
            );
        }
        "bulk" => {
            let seconds: f64 = arg(&args, 3);
            let stop = Arc::new(AtomicBool::new(false));
            let server = serve(
                TcpListener::bind(addr).expect("bind"),
                true,
                false,
                false,
                stop.clone(),
            );
            let mut stream = TcpStream::connect(addr).expect("connect");
            let chunk = vec![0x5au8; 1 << 16];
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed().as_secs_f64() < seconds {
                stream.write_all(&chunk).unwrap();
                sent += chunk.len() as u64;
            }
            let took = started.elapsed().as_secs_f64();
            drop(stream);
            let wakeups = stop_server(addr, &stop, server);
            println!(
                "ops={sent} seconds={took:.3} rate={:.1} connections={}",
                sent as f64 / took / 1e6,
                1 + wakeups
            );
        }
        "hold" => {
            // A process holds both ends of its connections, and a process may have few
            // descriptors (20,000 on some machines, root or not): split the load over
            // processes, each with its own listener address.
            let (count, seconds): (u64, f64) = (arg(&args, 3), arg(&args, 4));
            // "quiet": connections that carry no data (the kernel keeps them; see README).
            let quiet = args.get(5).is_some_and(|a| a == "quiet");
            let started = Instant::now();
            let parts = count.div_ceil(HOLD_PER_PROCESS);
            let children: Vec<_> = (0..parts)
                .map(|part| {
                    let share = HOLD_PER_PROCESS.min(count - part * HOLD_PER_PROCESS);
                    std::process::Command::new(std::env::current_exe().expect("own path"))
                        .args([
                            "hold-part",
                            &port.to_string(),
                            &share.to_string(),
                            &seconds.to_string(),
                            &part.to_string(),
                            if quiet { "quiet" } else { "data" },
                        ])
                        .spawn()
                        .expect("spawn a hold process")
                })
                .collect();
            let ok = children
                .into_iter()
                .all(|mut child| child.wait().is_ok_and(|status| status.success()));
            if !ok {
                eprintln!("stload hold: a holding process failed");
                std::process::exit(1);
            }
            println!(
                "ops={count} seconds={:.3} rate=0",
                started.elapsed().as_secs_f64()
            );
        }
        "hold-part" => {
            let (count, seconds, part): (u64, f64, u8) =
                (arg(&args, 3), arg(&args, 4), arg(&args, 5));
            let quiet = args.get(6).is_some_and(|a| a == "quiet");
            let ip = Ipv4Addr::new(127, 0, 1, 1 + part);
            let addr = SocketAddr::from((ip, port));
            let stop = Arc::new(AtomicBool::new(false));
            let server = serve(
                TcpListener::bind(addr).expect("bind"),
                false,
                true,
                !quiet,
                stop.clone(),
            );
            let mut held = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let mut stream = TcpStream::connect(addr).expect("connect");
                if !quiet {
                    // A byte each way: both ends are flows that carry data (watched for
                    // idleness; a flow that never carries data is not).
                    stream.write_all(b"x").expect("write");
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).expect("echo");
                }
                held.push(stream);
            }
            thread::sleep(Duration::from_secs_f64(seconds));
            drop(held);
            stop_server(addr, &stop, server);
        }
        _ => usage(),
    }
}
