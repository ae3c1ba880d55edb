//! `report --format html` opened in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `cargo xtask test`) renders the page of a realistic incident
//! (`report/incident.rs`) to a PNG, which must be a PNG of the window's size with the ladder's
//! colours in it, and dumps the DOM it built, which must hold every finding, its remedy and its
//! ladder's labels, with the hostile process name as text, never as an element. No privileges
//! needed. A test target of its own: in `tests/report.rs` its schema check (~65 MiB) would
//! count in the peak RSS the memory tests there measure. `UPDATE_GOLDEN=1` refreshes the
//! README's example, docs/report-example.png.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[path = "report/incident.rs"]
mod incident;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 1600;
/// The RST arrows' red (svg.rs), drawn solid: proof that the SVG was rendered.
const RESET_RED: [u8; 3] = [0xb9, 0x1c, 0x1c];

/// Runs Chromium headless on `page` with `args`, killed (and the test failed) after a minute.
fn chromium(page: &Path, profile: &Path, args: &[String]) -> String {
    let started = Instant::now();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium (Debian's chromium package; cargo xtask test installs it)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?}: {status}");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chromium {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// What the screenshot shows, counted row by row (no whole image held).
struct Picture {
    width: u32,
    height: u32,
    pixels: u64,
    white: u64,
    red: u64,
    colours: std::collections::HashSet<[u8; 3]>,
}

fn picture(path: &Path) -> Picture {
    let file = std::fs::File::open(path).expect("chromium wrote the screenshot");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let (color, _) = reader.output_color_type();
    let step = color.samples();
    assert!(step >= 3, "a colour screenshot: {color:?}");
    let info = reader.info();
    let mut seen = Picture {
        width: info.width,
        height: info.height,
        pixels: 0,
        white: 0,
        red: 0,
        colours: Default::default(),
    };
    while let Some(row) = reader.next_row().expect("PNG data") {
        for p in row.data().chunks(step) {
            let rgb = [p[0], p[1], p[2]];
            seen.pixels += 1;
            seen.white += u64::from(rgb == [255, 255, 255]);
            seen.red += u64::from(rgb == RESET_RED);
            seen.colours.insert(rgb);
        }
    }
    seen
}

#[test]
fn the_html_report_renders_in_chromium_with_ladders_and_escaped_trace_text() {
    let dir = std::env::temp_dir().join(format!("st-report-html-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The incident is what shuffletrace writes: each line matches the schema.
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schema/shuffletrace.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let lines = incident::lines();
    for line in &lines {
        if let Err(error) = validator.validate(line) {
            panic!("incident line does not match the schema: {error}\n{line}");
        }
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let trace = dir.join("shuffletrace-20261122T095958.000000000Z-000001.ndjson");
    std::fs::write(&trace, text).unwrap();

    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_shuffletrace"))
        .args(["report", "--format", "html"])
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let page = String::from_utf8(output.stdout).expect("UTF-8");
    eprintln!(
        "report --format html: {} bytes in {:?}",
        page.len(),
        started.elapsed()
    );
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    // Self-contained and inert: no script, no element from the trace, nothing loaded.
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(&#39;st&#39;)&lt;/script&gt;"));
    for reference in ["src=", "@import", "<link", "<iframe", "<object", "<img"] {
        assert!(!page.contains(reference), "{reference} in {page}");
    }
    assert!(
        page.matches("href=\"").count() == page.matches("href=\"#g").count(),
        "only links within the page: {page}"
    );
    let html = dir.join("report.html");
    std::fs::write(&html, &page).unwrap();

    // The DOM Chromium built from it.
    let profile = dir.join("chromium");
    let started = Instant::now();
    let dom = chromium(&html, &profile, &["--dump-dom".into()]);
    eprintln!("chromium --dump-dom: {:?}", started.elapsed());
    assert!(
        !dom.contains("<script"),
        "a script element in the DOM: {dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;alert('st')&lt;/script&gt;"),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<svg").count(),
        4,
        "one ladder per group: {dom}"
    );
    for expected in [
        // Every group, with its summary and remedy.
        "middlebox_reset 10.42.3.9:7337 (Spark external shuffle service)",
        "connect_timeout 10.42.5.20:10000 (HiveServer2 / Thrift)",
        "return_path_blocked 10.42.1.15:10001 (Spark Connect)",
        "tls_mismatch 10.42.6.2:10000 (HiveServer2 / Thrift)",
        "4 occurrence(s) from",
        "6 occurrence(s) from",
        "a device in between (firewall, NAT gateway, load balancer) reset the connection",
        "<code>traceroute -T -p 7337 10.42.3.9</code>",
        "<code>nc -vz 10.42.5.20 10000</code>",
        "Allow the return traffic from 10.42.1.15:10001",
        "<code>hive.server2.use.SSL=true</code>",
        // The ladders: columns, packets, who sent them, silences.
        "client 10.42.1.15:46822",
        "server 10.42.3.9:7337",
        ">middlebox<",
        "TTL 64, but the server's packets arrive with TTL 61: a middlebox sent it",
        "SYN (retransmit)",
        "SYN-ACK (retransmit)",
        "first data: tls_client_hello",
        "sent by the server: TTL 63, as the server's own packets",
        "351.203 s without a packet",
        "socket error ETIMEDOUT",
        "+15.357 s",
        // The timeline.
        "2026-11-22T10:08:15.000000000Z",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} not in the DOM:\n{dom}"
        );
    }

    // The picture.
    let png = dir.join("report.png");
    let started = Instant::now();
    chromium(
        &html,
        &profile,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
        ],
    );
    eprintln!("chromium --screenshot: {:?}", started.elapsed());
    let bytes = std::fs::metadata(&png).expect("a screenshot").len();
    assert!(
        bytes > 20_000,
        "a screenshot of {bytes} bytes is too small to hold the page"
    );
    let seen = picture(&png);
    assert_eq!((seen.width, seen.height), (WIDTH, HEIGHT));
    assert_eq!(seen.pixels, u64::from(WIDTH * HEIGHT), "every row decoded");
    let inked = seen.pixels - seen.white;
    assert!(
        inked * 50 > seen.pixels,
        "only {inked} of {} pixels are not white: a blank page",
        seen.pixels
    );
    assert!(
        seen.red > 100,
        "no RST arrow drawn ({} red pixels)",
        seen.red
    );
    assert!(seen.colours.len() > 50, "{} colours", seen.colours.len());
    eprintln!(
        "screenshot: {bytes} bytes, {WIDTH}x{HEIGHT}, {} colours, {inked} inked pixels",
        seen.colours.len()
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let example: PathBuf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report-example.png");
        std::fs::create_dir_all(example.parent().unwrap()).unwrap();
        std::fs::copy(&png, &example).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
