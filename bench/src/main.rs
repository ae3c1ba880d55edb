//! Load generator for `cargo xtask bench` (loopback only).
//!
//! ```text
//! stload churn   PORT COUNT THREADS   open and close COUNT connections to a local listener
//! stload refused PORT COUNT THREADS   COUNT connects to a port nobody listens on
//! stload bulk    PORT SECONDS         one connection streaming data for SECONDS
//! stload hold    PORT COUNT SECONDS   COUNT concurrent connections held open for SECONDS
//! ```
//! Each prints one line: `ops=<n> seconds=<s> rate=<ops per s>` (bulk: bytes and MB/s).

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

fn usage() -> ! {
    eprintln!(
        "usage: stload churn|refused PORT COUNT THREADS | bulk PORT SECONDS | hold PORT COUNT SECONDS"
    );
    std::process::exit(2);
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

/// A listener that accepts connections until told to stop: drops them at once, or drains
/// them (bulk). Blocking accept; `stop` is followed by one connection to wake it.
fn serve(
    listener: TcpListener,
    drain: bool,
    hold: bool,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    use std::os::fd::AsRawFd as _;
    // A deep accept queue: std's default backlog overflows under churn (dropped SYNs are
    // retried after a second and would dominate the measurement).
    // SAFETY: listen(2) again on our listening socket only changes its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    // A second acceptor, so accepting keeps up with two connecting threads.
    if !hold && !drain {
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
    thread::spawn(move || {
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
                held.push(conn);
            }
            // Otherwise dropped (closed) at once, so the 4-tuple is free for the next round.
        }
    })
}

/// Stops a `serve` thread.
fn stop_server(addr: SocketAddr, stop: &AtomicBool, server: thread::JoinHandle<()>) {
    stop.store(true, Ordering::Relaxed);
    // One wake-up per acceptor thread.
    for _ in 0..2 {
        let _ = TcpStream::connect(addr);
    }
    server.join().unwrap();
}

fn raise_nofile() {
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
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
            if let Some(server) = server {
                stop_server(addr, &stop, server);
            }
            println!(
                "ops={count} seconds={:.3} rate={:.0}",
                took.as_secs_f64(),
                count as f64 / took.as_secs_f64()
            );
        }
        "bulk" => {
            let seconds: f64 = arg(&args, 3);
            let stop = Arc::new(AtomicBool::new(false));
            let server = serve(
                TcpListener::bind(addr).expect("bind"),
                true,
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
            stop_server(addr, &stop, server);
            println!(
                "ops={sent} seconds={took:.3} rate={:.1}",
                sent as f64 / took / 1e6
            );
        }
        "hold" => {
            let (count, seconds): (u64, f64) = (arg(&args, 3), arg(&args, 4));
            // Several destination addresses: each has its own ephemeral port range.
            let stop = Arc::new(AtomicBool::new(false));
            let listener =
                TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).expect("bind");
            let server = serve(listener, false, true, stop.clone());
            let started = Instant::now();
            let mut held = Vec::with_capacity(count as usize);
            for i in 0..count {
                let ip = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
                let mut stream = TcpStream::connect((ip, port)).expect("connect");
                // A byte makes both ends flows the collector tracks (a flow that never carries
                // data stays in the kernel; see the README).
                stream.write_all(b"x").expect("write");
                held.push(stream);
            }
            println!(
                "ops={count} seconds={:.3} rate=0",
                started.elapsed().as_secs_f64()
            );
            std::io::stdout().flush().unwrap();
            thread::sleep(Duration::from_secs_f64(seconds));
            drop(held);
            stop_server(addr, &stop, server);
        }
        _ => usage(),
    }
}
