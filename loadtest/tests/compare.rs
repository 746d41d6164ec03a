//! `meridian-loadtest compare`: the CLI end to end on the `direct` row, the
//! overhead and ratio arithmetic, and the `/proc` readings on this very
//! process. Like the other tiers here, nothing asserts how fast anything is.
//! One test loads a real gateway: the `meridian` binary the same build made
//! (`target/debug/meridian`, beside this test's own directory), or the one
//! `MERIDIAN_BIN` names. Without it the test fails and says how to build it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use meridian_loadtest::compare::{Comparison, Overhead, RowKind, cpu_s_per_1k, ratio};
use meridian_loadtest::{Summary, procfs};

const BIN: &str = env!("CARGO_BIN_EXE_meridian-loadtest");

/// Runs `compare` with short phases and `extra` arguments; its JSON back.
fn compare(dir: &Path, extra: &[&str]) -> (Comparison, String) {
    let (c, page, _) = compare_text(dir, extra);
    (c, page)
}

/// [`compare`], with the tables it printed too.
fn compare_text(dir: &Path, extra: &[&str]) -> (Comparison, String, String) {
    let json = dir.join("compare.json");
    let html = dir.join("compare.html");
    let child = Command::new(BIN)
        .args([
            "compare",
            "--rate",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--concurrency",
            "4",
            "--throughput-duration",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ])
        .args(extra)
        .env_remove("MERIDIAN_BIN")
        .env_remove("LITELLM_VENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "compare failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Its work directory (logs, data directories) is gone.
    let work = std::env::temp_dir().join(format!("meridian-compare-{pid}-0"));
    assert!(!work.exists(), "{} left behind", work.display());
    // Nothing it started still runs: every process of a row names its
    // directory in the work directory on its command line.
    let marker = format!("meridian-compare-{pid}-");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(!cmdline.contains(&marker), "left running: {cmdline}");
    }
    let comparison: Comparison = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let page = std::fs::read_to_string(&html).unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (comparison, page, text)
}

#[test]
fn compare_runs_the_direct_row_and_skips_what_is_not_asked_for() {
    let dir = tempfile_dir("direct");
    let (c, page, text) = compare_text(
        &dir,
        &[
            "--rows",
            "litellm,direct,nginx",
            "--nginx-bin",
            "/nonexistent/nginx",
        ],
    );

    assert_eq!(c.rows.len(), 1, "{c:#?}");
    let direct = &c.rows[0];
    assert_eq!(direct.row, RowKind::Direct);
    // 100/s for 1 s, the warm-up not counted.
    assert_eq!(direct.fixed_rate.requests, 100);
    assert_eq!(
        direct.fixed_rate.successes, 100,
        "{:?}",
        direct.fixed_rate.errors
    );
    assert_eq!(direct.fixed_rate.sent_total, 150);
    assert!(direct.max_throughput.successes > 0);
    assert!(direct.max_throughput.errors.is_empty());
    // Against itself: no overhead, a ratio of one.
    assert_eq!(direct.overhead, Some(Overhead::default()));
    assert_eq!(direct.throughput_ratio, Some(1.0));
    assert_eq!(direct.processes, 1);
    assert_eq!(direct.measured, "fake upstream");
    assert!(direct.cpu_s_per_1k.is_some_and(|c| c >= 0.0));
    assert!(direct.cpu_s_per_1k_max.is_some_and(|c| c >= 0.0));
    assert!(direct.generator_cpu_s_per_1k.is_some_and(|c| c >= 0.0));
    assert!(direct.rss_idle_kib > 0);
    assert!(direct.rss_after_kib > 0);

    // LiteLLM was named but not asked for: skipped, saying how to ask; nginx
    // is not where it was said to be. Both are in the tables, not run.
    assert_eq!(c.skipped.len(), 2);
    assert_eq!(c.skipped[0].row, RowKind::Nginx);
    assert!(
        c.skipped[0].reason.contains("/nonexistent/nginx"),
        "{:?}",
        c.skipped
    );
    assert_eq!(c.skipped[1].row, RowKind::Litellm);
    assert!(c.skipped[1].reason.contains("--litellm"), "{:?}", c.skipped);
    assert!(c.failed.is_empty());
    assert!(
        text.contains(&format!(
            "{:<21} not run: no nginx at /nonexistent/nginx",
            "nginx"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{:<21} not run: not asked for", "litellm")),
        "{text}"
    );
    assert_eq!(direct.sequential, None);

    // The report states where and how it ran.
    assert!(c.machine.cores > 0);
    assert!(c.machine.memory_mib > 0);
    assert!(c.command.contains("--rows litellm,direct"), "{}", c.command);
    assert!(c.date.ends_with(" UTC"), "{}", c.date);
    assert!(c.builds.iter().any(|b| b.contains("dev-profile")));

    assert!(page.contains("Side by side"));
    assert!(page.contains("direct"));
    assert!(page.contains("litellm skipped"));
    assert!(page.contains(&c.date));
    assert!(!page.contains("<script"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_refuses_meridian_rows_without_a_binary() {
    let output = Command::new(BIN)
        .args(["compare", "--rows", "direct,meridian-1"])
        .env_remove("MERIDIAN_BIN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--meridian-bin"), "{stderr}");

    let output = Command::new(BIN)
        .args(["compare", "--rows", "direct,envoy"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown row"));
}

#[test]
fn overhead_is_the_difference_at_each_percentile() {
    let direct = Summary {
        count: 1000,
        p50_us: 1_800,
        p90_us: 2_200,
        p99_us: 2_400,
        p999_us: 4_700,
        ..Summary::default()
    };
    let gateway = Summary {
        count: 1000,
        p50_us: 4_250,
        p90_us: 5_950,
        p99_us: 13_940,
        p999_us: 4_000,
        ..Summary::default()
    };
    assert_eq!(
        Overhead::between(&gateway, &direct),
        Overhead {
            p50_us: 2_450,
            p90_us: 3_750,
            p99_us: 11_540,
            // Faster than direct in the tail: noise, kept negative.
            p999_us: -700,
        }
    );
    assert_eq!(Overhead::between(&direct, &direct), Overhead::default());

    assert_eq!(
        ratio(980.0, 6_240.0).map(|r| (r * 1000.0).round()),
        Some(157.0)
    );
    assert_eq!(ratio(100.0, 0.0), None);
    assert_eq!(ratio(f64::NAN, 10.0), None);
    assert_eq!(ratio(0.0, 10.0), Some(0.0));

    // 150 ticks at 100/s over 500 requests: 1.5 s, 3 s per 1,000.
    assert_eq!(cpu_s_per_1k(150, 100, 500), Some(3.0));
    assert_eq!(cpu_s_per_1k(150, 100, 0), None);
    assert_eq!(cpu_s_per_1k(0, 100, 10), Some(0.0));
}

#[test]
fn proc_readings_of_this_process() {
    let me = std::process::id();
    let before = procfs::stat(me).unwrap();
    assert_eq!(before.pid, me);
    assert!(before.ppid > 0);
    // Some CPU work; the count can only grow.
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let after = procfs::stat(me).unwrap();
    assert!(after.cpu.own >= before.cpu.own);

    assert!(procfs::rss_kib(me).unwrap() > 0);
    assert!(procfs::clock_ticks_per_second() > 0);

    // A child is part of this process's tree, and its memory is counted.
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let tree = procfs::tree(&[me]).unwrap();
    assert!(tree.contains(&me));
    assert!(tree.contains(&child.id()), "{tree:?}");
    assert!(procfs::tree_rss_kib(&[me]).unwrap() >= procfs::rss_kib(me).unwrap());
    assert!(procfs::tree_cpu_ticks(&[me]).unwrap() >= after.cpu.own);
    child.kill().unwrap();
    child.wait().unwrap();

    let machine = procfs::Machine::read();
    assert!(machine.cores > 0);
    assert!(machine.memory_mib > 0);
}

/// The reference rows end to end at low load: nginx and Portkey started,
/// loaded in all three phases (the sequential one too) and stopped. Each
/// runs only where its programs are (nginx; node and npm, Portkey being
/// installed into the usual cache directory at first use); a missing one is
/// said and skipped, so this passes on a machine with neither.
#[test]
fn compare_runs_the_reference_rows_where_installed() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = |name: &str| std::env::split_paths(&path).any(|d| d.join(name).is_file());
    let mut rows = vec!["direct"];
    if on_path("nginx") || Path::new("/usr/sbin/nginx").is_file() {
        rows.push("nginx");
    } else {
        eprintln!("skipping the nginx row: no nginx on PATH or in /usr/sbin");
    }
    if on_path("node") && on_path("npm") {
        rows.push("portkey");
    } else {
        eprintln!("skipping the portkey row: node or npm not on PATH");
    }
    if rows.len() == 1 {
        eprintln!("skipping: neither nginx nor node and npm are installed");
        return;
    }
    let dir = tempfile_dir("reference");
    let list = rows.join(",");
    let (c, page, text) = compare_text(&dir, &["--rows", &list, "--sequential-gap-ms", "20"]);
    assert!(c.failed.is_empty(), "{:?}", c.failed);
    // An install that cannot be done here (no registry) is a row not run,
    // said, not a failure.
    for n in &c.skipped {
        eprintln!("skipped the {} row: {}", n.row.name(), n.reason);
        assert_eq!(n.row, RowKind::Portkey, "{:?}", c.skipped);
        assert!(
            text.contains(&format!("{:<21} not run: ", "portkey")),
            "{text}"
        );
    }
    let names: Vec<&str> = c.rows.iter().map(|r| r.row.name()).collect();
    let ran: Vec<&str> = rows
        .iter()
        .copied()
        .filter(|r| !c.skipped.iter().any(|n| n.row.name() == *r))
        .collect();
    assert_eq!(names, ran);
    assert_eq!(c.settings.sequential_gap_ms, Some(20));
    for row in &c.rows {
        let name = row.row.name();
        let sequential = row.sequential.as_ref().expect("a sequential phase");
        for run in [&row.fixed_rate, &row.max_throughput, sequential] {
            assert!(run.requests > 0, "{name}: {run:#?}");
            assert_eq!(run.successes, run.requests, "{name}: {:?}", run.errors);
        }
        // 100/s for 1 s, the warm-up not counted.
        assert_eq!(row.fixed_rate.requests, 100, "{name}");
        // One request at a time with 20 ms between: at most 50 a second,
        // over 1.5 s with the warm-up.
        assert!(
            sequential.sent_total <= 76,
            "{name}: {}",
            sequential.sent_total
        );
        assert!(row.overhead.is_some() && row.sequential_overhead.is_some());
        assert!(row.throughput_ratio.is_some_and(|r| r > 0.0), "{name}");
        assert!(row.cpu_s_per_1k.is_some() && row.cpu_s_per_1k_sequential.is_some());
        assert!(row.rss_idle_kib > 0, "{name}");
        assert!(page.contains(name));
        assert!(
            text.lines().filter(|l| l.starts_with(name)).count() >= 3,
            "{text}"
        );
    }
    if let Some(nginx) = c.rows.iter().find(|r| r.row == RowKind::Nginx) {
        assert_eq!(nginx.measured, "proxy");
        assert!(c.builds.iter().any(|b| b.starts_with("nginx version")));
    }
    if c.rows.iter().any(|r| r.row == RowKind::Portkey) {
        assert!(
            c.builds
                .iter()
                .any(|b| b.starts_with("Portkey gateway 1.15.2"))
        );
    }
    assert!(text.contains("Latency of one client, 20 ms"), "{text}");
    assert!(page.contains("One client, 20 ms"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `meridian` binary: `MERIDIAN_BIN`, else the one the workspace build
/// put beside this test's directory (`target/debug/deps/compare-…` →
/// `target/debug/meridian`).
fn meridian_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("MERIDIAN_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("meridian");
    assert!(
        bin.exists(),
        "no meridian binary at {}: build the workspace first (`cargo build --workspace --all-targets`, as ops/dev.sh test does) or set MERIDIAN_BIN",
        bin.display()
    );
    bin
}

/// A Meridian row end to end: a real gateway, a virtual key, both phases.
#[test]
fn compare_loads_one_meridian_node_through_a_virtual_key() {
    let bin = meridian_bin();
    let dir = tempfile_dir("meridian");
    let (c, page) = compare(
        &dir,
        &[
            "--rows",
            "direct,meridian-1",
            "--meridian-bin",
            bin.to_str().unwrap(),
        ],
    );
    assert!(c.failed.is_empty(), "{:?}", c.failed);
    let row = c.rows.iter().find(|r| r.row == RowKind::Meridian1).unwrap();
    assert_eq!(row.fixed_rate.requests, 100);
    assert_eq!(row.fixed_rate.successes, 100, "{:?}", row.fixed_rate.errors);
    assert!(row.max_throughput.errors.is_empty());
    assert_eq!(row.processes, 1);
    assert_eq!(row.measured, "gateway");
    assert!(row.key.contains("virtual key"));
    assert!(row.overhead.is_some());
    assert!(row.throughput_ratio.is_some());
    assert!(row.rss_idle_kib > 0);
    assert!(page.contains("meridian-1"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for one test's outputs.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meridian-compare-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
