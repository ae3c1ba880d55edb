//! `cargo xtask bench --spark`: shuffletrace's overhead on a real Spark job. A local
//! standalone cluster (a master and one worker on 127.0.0.1; the worker runs the external
//! shuffle service on 7337, two executors) runs one application that repeats a shuffle-heavy
//! job on command; rounds interleave untraced and traced jobs, and the ratio of medians of
//! the jobs' wall times is reported. Executors fetch each other's shuffle blocks through the
//! shuffle service (`spark.shuffle.readHostLocalDisk=false`), so the traced flows are the
//! ones shuffletrace exists for.
//!
//! Spark comes from pyspark's sdist on PyPI (it carries a full distribution: jars, bin,
//! sbin), downloaded once into target/bench/spark with `pip download`; Java 17 must be
//! installed. It is a benchmark, never part of `cargo xtask test`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::bench::{Tracer, median};

const ROUNDS: usize = 5;
/// Jobs run and thrown away before the rounds (see `run`).
const WARM_UP_JOBS: usize = 4;
const MASTER_PORT: u16 = 7077;
const SHUFFLE_SERVICE_PORT: u16 = 7337;

/// The driver: one application, one job per `go` line on stdin, `took SECONDS` per job.
const DRIVER: &str = r#"
import sys, time
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).appName("shuffletrace-bench")
         .config("spark.executor.cores", "1").config("spark.cores.max", "2")
         .config("spark.executor.memory", "1g").config("spark.driver.memory", "1g")
         .config("spark.shuffle.service.enabled", "true")
         .config("spark.shuffle.readHostLocalDisk", "false")
         .config("spark.sql.adaptive.enabled", "false")
         .config("spark.sql.shuffle.partitions", "16")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
rows = int(sys.argv[2])
def job():
    # Every row crosses the shuffle twice (repartition, then the aggregation's exchange).
    df = spark.range(0, rows, 1, 8).repartition(16).selectExpr("id % 100000 as k", "id as v")
    return df.groupBy("k").sum("v").count()
print("ready", flush=True)
for line in sys.stdin:
    started = time.monotonic()
    job()
    print("took %.3f" % (time.monotonic() - started), flush=True)
spark.stop()
"#;

/// Rows per job: a few seconds of work on a 2-core VM.
const ROWS: u64 = 6_000_000;

fn spark_dir(root: &Path) -> PathBuf {
    root.join("target/bench/spark")
}

/// pyspark's unpacked sdist (downloaded and unpacked when missing).
fn pyspark(root: &Path) -> Result<PathBuf> {
    let dir = spark_dir(root);
    std::fs::create_dir_all(&dir)?;
    let find_sdist = || -> Option<PathBuf> {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pyspark-") && n.ends_with(".tar.gz"))
            })
    };
    let sdist = match find_sdist() {
        Some(sdist) => sdist,
        None => {
            eprintln!("xtask bench --spark: downloading pyspark's sdist (~450 MB) from PyPI");
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "pyspark", "--no-deps", "--no-binary"])
                .arg(":all:")
                .arg("-d")
                .arg(&dir)
                .status()
                .context(
                    "running `python3 -m pip`: the Spark bench needs Python 3 with pip to fetch pyspark's sdist",
                )?;
            if !status.success() {
                bail!(
                    "`pip download pyspark` failed: the Spark bench needs PyPI (or a pyspark-*.tar.gz in {})",
                    dir.display()
                );
            }
            find_sdist().context("pip download left no pyspark-*.tar.gz")?
        }
    };
    let name = sdist
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .context("sdist name")?
        .to_owned();
    let unpacked = dir.join(&name);
    if !unpacked.join("deps/jars").is_dir() {
        eprintln!("xtask bench --spark: unpacking {}", sdist.display());
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&sdist)
            .arg("-C")
            .arg(&dir)
            .status()?;
        if !status.success() || !unpacked.join("deps/jars").is_dir() {
            bail!(
                "{} holds no Spark distribution (deps/jars)",
                sdist.display()
            );
        }
    }
    Ok(unpacked)
}

/// A SPARK_HOME laid out as Spark's scripts expect, pointing into the unpacked sdist.
fn spark_home(pyspark: &Path) -> Result<PathBuf> {
    let home = pyspark.join("spark-home");
    std::fs::create_dir_all(&home)?;
    for (link, target) in [
        ("bin", "deps/bin"),
        ("sbin", "deps/sbin"),
        ("jars", "deps/jars"),
        ("python", "."),
    ] {
        let path = home.join(link);
        if !path.exists() {
            std::os::unix::fs::symlink(pyspark.join(target), &path)?;
        }
    }
    Ok(home)
}

fn check_java() -> Result<()> {
    let output = Command::new("java").arg("-version").output().context(
        "no `java`: the Spark bench needs Java 17 (apt-get install openjdk-17-jre-headless)",
    )?;
    let text = String::from_utf8_lossy(&output.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 17 {
        bail!("Spark 4 needs Java 17 or later; `java -version` says: {text}");
    }
    Ok(())
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The cluster's processes, killed when dropped.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spark_class(home: &Path, log: &Path) -> Result<Command> {
    let mut command = Command::new(home.join("bin/spark-class"));
    command
        .env("SPARK_HOME", home)
        .stdout(Stdio::from(std::fs::File::create(log)?))
        .stderr(Stdio::from(std::fs::File::create(
            log.with_extension("err"),
        )?));
    Ok(command)
}

/// The driver application: sends `go`, returns the job's seconds.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn job(&mut self) -> Result<f64> {
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the Spark driver exited (see target/bench/spark/driver.err)");
            }
            if let Some(seconds) = line.trim().strip_prefix("took ") {
                return Ok(seconds.parse()?);
            }
        }
    }
}

/// Established connections to the shuffle service (`ss`), to show the jobs went through it.
fn shuffle_service_connections() -> usize {
    Command::new("ss")
        .args(["-Htn", "state", "established", "dport", "= :7337"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

pub fn run(root: &Path) -> Result<()> {
    check_java()?;
    let pyspark = pyspark(root)?;
    let home = spark_home(&pyspark)?;
    let logs = spark_dir(root);
    if TcpStream::connect(("127.0.0.1", SHUFFLE_SERVICE_PORT)).is_ok() {
        bail!("something already listens on 127.0.0.1:7337; the bench needs the port");
    }
    let mut cluster = Cluster(Vec::new());
    let master = format!("spark://127.0.0.1:{MASTER_PORT}");
    cluster.0.push(
        spark_class(&home, &logs.join("master.log"))?
            .args([
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
            ])
            .args(["--port", &MASTER_PORT.to_string(), "--webui-port", "18080"])
            .spawn()
            .context("starting the Spark master")?,
    );
    wait_for_port(MASTER_PORT, "the Spark master", Duration::from_secs(120))?;
    cluster.0.push(
        spark_class(&home, &logs.join("worker.log"))?
            .env(
                "SPARK_WORKER_OPTS",
                "-Dspark.shuffle.service.enabled=true -Dspark.shuffle.service.port=7337",
            )
            .args([
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
            ])
            .args(["--cores", "2", "--memory", "3g", "--webui-port", "18081"])
            .arg(&master)
            .spawn()
            .context("starting the Spark worker")?,
    );
    wait_for_port(
        SHUFFLE_SERVICE_PORT,
        "the external shuffle service",
        Duration::from_secs(120),
    )?;
    let py4j = std::fs::read_dir(pyspark.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("py4j"))
        .context("no py4j in the sdist's lib/")?;
    let mut child = Command::new("python3")
        .args(["-c", DRIVER, &master, &ROWS.to_string()])
        .env("SPARK_HOME", &home)
        .env(
            "PYTHONPATH",
            format!("{}:{}", pyspark.display(), py4j.display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(logs.join("driver.err"))?))
        .spawn()
        .context("starting the Spark driver (python3)")?;
    let mut stdout = BufReader::new(child.stdout.take().context("driver stdout")?);
    let mut ready = String::new();
    while !ready.starts_with("ready") {
        ready.clear();
        if stdout.read_line(&mut ready)? == 0 {
            bail!(
                "the Spark driver exited before it was ready (see target/bench/spark/driver.err)"
            );
        }
    }
    let stdin = child.stdin.take().context("driver stdin")?;
    let mut driver = Driver {
        child,
        stdin,
        stdout,
    };
    // Warm-up: executors start, code is JIT-compiled, connections to the service are made.
    // Jobs keep getting faster for a few more (16.7, 6.9, 5.2, 4.3, 3.8 s in one run).
    for _ in 0..WARM_UP_JOBS {
        let took = driver.job()?;
        eprintln!("xtask bench --spark: warm-up job {took:.2} s");
    }
    let connections = shuffle_service_connections();
    let (mut plain, mut traced) = (Vec::new(), Vec::new());
    let mut tracer_output = String::new();
    for round in 0..ROUNDS {
        // Which job runs first alternates: a job that still gets faster, run always second,
        // would make the tracer look free (all five traced jobs were faster in one run).
        let traced_first = round % 2 == 1;
        if !traced_first {
            plain.push(driver.job()?);
        }
        let tracer = Tracer::shuffletrace(&[])?;
        traced.push(driver.job()?);
        let (output, _, _) = tracer.stop_with_peak()?;
        tracer_output = output;
        if traced_first {
            plain.push(driver.job()?);
        }
        eprintln!(
            "xtask bench --spark: round {round}: untraced {:.2} s, shuffletrace {:.2} s",
            plain[round], traced[round]
        );
    }
    drop(driver.stdin);
    let _ = driver.child.wait();
    drop(cluster);
    let (plain, traced) = (median(&mut plain), median(&mut traced));
    let lost = crate::bench::stats_number(&tracer_output, "lost_events");
    println!(
        "\nSpark job (standalone cluster on 127.0.0.1, external shuffle service on 7337, 2 executors; {ROWS} rows shuffled twice per job), {ROUNDS} interleaved rounds:"
    );
    println!(
        "  job wall time: untraced {plain:.2} s, shuffletrace {traced:.2} s; ratio (untraced / traced) {:.3}",
        plain / traced
    );
    println!(
        "  {connections} established connections to the shuffle service after warm-up; shuffletrace lost {lost} events in the last round"
    );
    Ok(())
}
