//! Root integration test of the alert rules against a live tracer and a real Prometheus (Debian's
//! `prometheus` package): Prometheus scrapes `--metrics-addr` every second and evaluates
//! deploy/prometheus/shuffletrace.rules.yml (its `for:` durations cut to 0 s, nothing else
//! changed). Clean connections to the shuffle service fire nothing; a refused-connect storm to
//! 7337 makes the refusal alert's expression return a series for port 7337 and the alert fire,
//! its service named. The promtool unit tests (deploy/prometheus/tests.yml) cover every alert;
//! this proves the rules read the metric names and labels the tracer really serves. After the
//! storm, every panel of the Grafana dashboard (deploy/grafana/shuffletrace.json) is queried
//! with its template variables filled in as Grafana would: each must parse and return series,
//! and name only metric families the tracer serves.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Topology, Tracer, connect, expected_missing};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/shuffletrace.rules.yml"
);
const ALERT: &str = "ShuffletraceConnectRefused";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/shuffletrace.json"
);
/// The node label the scrape job gives the target, as the README's relabelling does.
const NODE: &str = "st-prom-node";

/// A Prometheus server on a temporary directory, killed and removed on drop (a failed
/// assertion included).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shuffletrace-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The rules as shipped, evaluated without waiting out their `for:`.
        let rules: String = std::fs::read_to_string(RULES)
            .expect("the rules file")
            .lines()
            .map(|line| match line.split_once("for: ") {
                Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 0s\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  \
                   - job_name: shuffletrace\n    \
                     static_configs: [{{targets: ['{target}'], labels: {{node: {NODE}}}}}]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's prometheus package; cargo xtask test installs it)");
        let server = Self { child, dir, addr };
        server.wait_until("ready", Duration::from_secs(30), || {
            http_get(&server.addr, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        server
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(&self.addr, &path).expect("Prometheus answers");
        assert_eq!(status, 200, "{expr}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: {answer}"))
            .clone()
    }

    /// The label sets of the series a selector matches.
    fn series(&self, selector: &str) -> Vec<Value> {
        let path = format!("/api/v1/series?match[]={}", percent_encode(selector));
        let (status, body) = http_get(&self.addr, &path).expect("Prometheus answers");
        assert_eq!(status, 200, "{selector}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        answer["data"].as_array().cloned().unwrap_or_default()
    }

    fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("prometheus.log"));
                panic!("Prometheus: not {what} within {limit:?}; its log:\n{log:?}");
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One HTTP/1.0 GET (no chunked answer): status and body, or None when nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `expr:` of an alert in the rules file (a `|-` block).
fn alert_expression(name: &str) -> String {
    let rules = std::fs::read_to_string(RULES).unwrap();
    let mut lines = rules
        .lines()
        .skip_while(|line| line.trim() != format!("- alert: {name}"))
        .skip(1);
    assert_eq!(lines.next().map(str::trim), Some("expr: |-"), "{name}");
    lines
        .take_while(|line| !line.trim_start().starts_with("for:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_refused_connect_storm_to_the_shuffle_service_fires_the_refusal_alert_and_clean_runs_do_not() {
    let topology = Topology::new();
    let server = SocketAddr::new(topology.server_v4, 7337);
    let metrics = format!("127.0.0.1:{}", free_port());
    let tracer = Tracer::start_with(&["--ports", "7337", "--metrics-addr", &metrics]);
    let prometheus = Prometheus::start(&metrics);
    let expression = alert_expression(ALERT);

    // A clean run: 20 connections to a listening shuffle service, closed with FINs.
    let listener = topology
        .server
        .run("shuffle-svc", move || TcpListener::bind(server).unwrap())
        .join()
        .unwrap();
    let clients = topology
        .client
        .run("executor", move || {
            (0..20)
                .map(|_| connect(server).expect("connect to the listening port"))
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
    let accepted: Vec<TcpStream> = (0..20).map(|_| listener.accept().unwrap().0).collect();
    drop(clients);
    drop(accepted);
    prometheus.wait_until("scraping the clean flows", Duration::from_secs(20), || {
        !prometheus
            .query(r#"shuffletrace_clean_flows_total{job="shuffletrace",port="7337"} > 0"#)
            .is_empty()
    });
    // A few more evaluations of the rules on the clean run's samples.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        prometheus.query(&expression),
        Vec::<Value>::new(),
        "{ALERT} on a clean run"
    );
    let firing = prometheus.query(r#"ALERTS{alertname!="ShuffletraceProgramsMissing"}"#);
    assert_eq!(firing, Vec::<Value>::new(), "alerts on a clean run");
    let missing = prometheus.query(r#"shuffletrace_programs_missing{job="shuffletrace"}"#);
    assert_eq!(
        missing.first().map(|m| m["value"][1].clone()),
        Some(Value::from(expected_missing().len().to_string())),
        "{missing:?}"
    );

    // The shuffle service goes away: a storm of refused connects, over a few scrapes.
    drop(listener);
    let refused = topology
        .client
        .run("executor", move || {
            (0..100)
                .filter(|_| {
                    thread::sleep(Duration::from_millis(30));
                    connect(server)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
                })
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(refused, 100, "every connect refused");
    let mut series = Vec::new();
    prometheus.wait_until(
        "returning a series for the storm",
        Duration::from_secs(20),
        || {
            series = prometheus.query(&expression);
            !series.is_empty()
        },
    );
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["metric"]["port"], "7337", "{series:?}");
    assert_eq!(series[0]["metric"]["job"], "shuffletrace", "{series:?}");
    let count: f64 = series[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(count >= 5.0, "{series:?}");
    // The alert itself, with its labels and the service named.
    let alert = format!(r#"ALERTS{{alertname="{ALERT}",alertstate="firing"}}"#);
    let mut alerts = Vec::new();
    prometheus.wait_until("firing the alert", Duration::from_secs(10), || {
        alerts = prometheus.query(&alert);
        !alerts.is_empty()
    });
    assert_eq!(alerts[0]["metric"]["port"], "7337", "{alerts:?}");
    assert_eq!(
        alerts[0]["metric"]["service"], "Spark external shuffle service",
        "{alerts:?}"
    );

    dashboard_panels_return_series(&prometheus, &metrics);

    drop(prometheus);
    let lines = tracer.stop();
    let findings = support::findings(&lines, "connect_refused");
    assert!(!findings.is_empty(), "{}", support::dump(&lines));
}

/// The metric families the tracer serves (`# TYPE` lines: a family is declared before it has
/// a series, so a loss counter that never moved is known too).
fn served_families(metrics: &str) -> Vec<String> {
    let (status, body) = http_get(metrics, "/metrics").expect("the tracer serves /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// Every `shuffletrace_...` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices("shuffletrace_")
        .map(|(at, _)| {
            let rest = &expr[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Each dashboard panel's queries, as Grafana sends them: the node variable's values from its
/// own `label_values` query, Grafana's interval variables as durations.
fn dashboard_panels_return_series(prometheus: &Prometheus, metrics: &str) {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("JSON");
    let families = served_families(metrics);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let node = variables.iter().find(|v| v["name"] == "node").unwrap();
    let definition = node["query"]["query"].as_str().unwrap();
    let selector = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(", node)"))
        .unwrap_or_else(|| panic!("node variable: {definition}"));
    let series = prometheus.series(selector);
    let nodes: Vec<&str> = series.iter().filter_map(|s| s["node"].as_str()).collect();
    assert!(nodes.contains(&NODE), "{definition}: {series:?}");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let family = name.strip_suffix("_total").unwrap_or(name);
                assert!(
                    families.iter().any(|f| f == family),
                    "{title}: {name} is not served by the tracer ({families:?})"
                );
            }
            let query = expr
                .replace("$node", NODE)
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            assert!(!query.contains('$'), "{title}: a variable left in {query}");
            let mut result = Vec::new();
            prometheus.wait_until(
                &format!("returning series for panel {title:?}: {query}"),
                Duration::from_secs(20),
                || {
                    result = prometheus.query(&query);
                    !result.is_empty()
                },
            );
            queried += 1;
        }
    }
    assert!(queried >= 10, "{queried} panel queries");
}
