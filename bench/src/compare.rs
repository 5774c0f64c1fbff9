//! `meshgate-bench report`: turns the results of a side-by-side run
//! (`scripts/bench.sh`, one JSON line per target and per run) into the
//! Markdown tables of BENCHMARKS.md and SVG charts.
//!
//! Input lines are `{"kind":"target","name","desc","skipped"}` (one per
//! target, in the order the tables list them) and
//! `{"kind":"run","target","case","rep","exit","result"}` where `result`
//! is the generator's JSON (see `report.rs`) or `null` when the run gave
//! none. Every figure is the median of the runs of one (case, target) with
//! their min and max; ratios are taken between medians. An "added" figure
//! is paired by repetition: this target's figure minus the baseline's (no
//! proxy) in the same repetition, then the median and range of those
//! differences. This module reads the results file and writes the charts;
//! the section goes to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::cli::ReportArgs;
use crate::svg::{self, Bar};

/// A target as the run described it.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    desc: String,
    skipped: Option<String>,
}

/// One run: its repetition and its result (`None` where it gave none).
type Run = (u64, Option<Value>);

/// All results, grouped.
#[derive(Debug, Default)]
struct Results {
    targets: Vec<Target>,
    /// (case, target) -> (repetition, result) of its runs, `None` where a
    /// run gave none.
    runs: BTreeMap<(String, String), Vec<Run>>,
}

/// Median, min and max of one figure over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Option<Stat> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// How a figure is read out of one result.
type Metric = fn(&Value) -> Option<f64>;

/// Which ratio columns follow a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ratio {
    /// None.
    None,
    /// This ÷ the baseline (no proxy), and the reference ÷ this.
    Both,
    /// Only the reference ÷ this.
    Reference,
    /// This ÷ the floor forwarder (above 1: this costs more than the floor).
    Floor,
}

/// One figure of a table.
struct Column {
    title: &'static str,
    metric: Metric,
    digits: usize,
    ratio: Ratio,
    /// Paired with the baseline: this row's figure minus the baseline's in
    /// the same repetition (what a proxy adds).
    added: bool,
}

const fn col(title: &'static str, metric: Metric, digits: usize, ratio: Ratio) -> Column {
    Column {
        title,
        metric,
        digits,
        ratio,
        added: false,
    }
}

/// A table: one case, the figures shown for it.
struct Table {
    case: &'static str,
    title: &'static str,
    note: &'static str,
    columns: Vec<Column>,
}

/// A chart: one figure of one case.
struct Chart {
    file: &'static str,
    case: &'static str,
    title: &'static str,
    metric: Metric,
    lower_is_better: bool,
    /// Drawn as added over the baseline (paired by repetition).
    added: bool,
}

/// An added figure: `col` marked as paired with the baseline.
const fn added(title: &'static str, metric: Metric, digits: usize, ratio: Ratio) -> Column {
    Column {
        title,
        metric,
        digits,
        ratio,
        added: true,
    }
}

fn at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn gbps(v: &Value) -> Option<f64> {
    at(v, &["throughput", "gbit_per_sec"])
}
fn cpu_per_gib(v: &Value) -> Option<f64> {
    at(v, &["proxy", "cpu_secs_per_gib"])
}
fn cps(v: &Value) -> Option<f64> {
    at(v, &["throughput", "connections_per_sec"])
}
fn rps(v: &Value) -> Option<f64> {
    at(v, &["throughput", "requests_per_sec"])
}
fn p50(v: &Value) -> Option<f64> {
    at(v, &["latency_us", "p50"])
}
fn p99(v: &Value) -> Option<f64> {
    at(v, &["latency_us", "p99"])
}
fn p999(v: &Value) -> Option<f64> {
    at(v, &["latency_us", "p999"])
}
fn cpu_per_1k_conns(v: &Value) -> Option<f64> {
    at(v, &["proxy", "cpu_ms_per_1k_conns"])
}
fn cpu_us_per_request(v: &Value) -> Option<f64> {
    let reqs = at(v, &["requests"])?;
    (reqs > 0.0).then(|| at(v, &["proxy", "cpu_secs"]).map(|s| s * 1e6 / reqs))?
}
fn host_per_gib(v: &Value) -> Option<f64> {
    at(v, &["host", "busy_secs_per_gib"])
}
fn host_per_1k_conns(v: &Value) -> Option<f64> {
    at(v, &["host", "busy_ms_per_1k_conns"])
}
fn host_per_request(v: &Value) -> Option<f64> {
    at(v, &["host", "busy_us_per_request"])
}
fn host_busy_pct(v: &Value) -> Option<f64> {
    at(v, &["host", "busy_share"]).map(|s| s * 100.0)
}
fn established(v: &Value) -> Option<f64> {
    at(v, &["idle", "established"])
}
fn rss_per_conn(v: &Value) -> Option<f64> {
    at(v, &["idle", "proxy", "rss_bytes_per_connection"])
}
fn rss_before_mib(v: &Value) -> Option<f64> {
    at(v, &["idle", "proxy", "rss_bytes_before"]).map(|b| b / (1u64 << 20) as f64)
}
fn threads_before(v: &Value) -> Option<f64> {
    at(v, &["idle", "proxy", "threads_before"])
}
fn threads_open(v: &Value) -> Option<f64> {
    at(v, &["idle", "proxy", "threads_open"])
}
fn fds_per_conn(v: &Value) -> Option<f64> {
    at(v, &["idle", "proxy", "fds_per_connection"])
}

fn tables() -> Vec<Table> {
    let bulk = |case, title| Table {
        case,
        title,
        note: "4 streams. Higher Gbit/s and lower CPU s/GiB are better. \"host\" is the \
               whole host's busy CPU time per GiB (every process and the kernel), \
               \"added\" that minus no proxy's in the same repetition. A proxy that \
               closes both sides when the client half-closes (sniproxy) makes the \
               backend count one reset per stream at tear-down (\"errors\").",
        columns: vec![
            col("Gbit/s", gbps, 2, Ratio::Both),
            col("proxy CPU s/GiB", cpu_per_gib, 3, Ratio::None),
            col("host CPU s/GiB", host_per_gib, 3, Ratio::None),
            added("added host s/GiB", host_per_gib, 3, Ratio::Floor),
        ],
    };
    vec![
        bulk("bulk-download", "Bulk download (backend → client)"),
        bulk("bulk-upload", "Bulk upload (client → backend)"),
        Table {
            case: "cps",
            title: "Connections per second",
            note: "32 workers: connect, hello, 64-byte request, 64-byte answer, close. \
                   Latency is one whole exchange. CPU per 1,000 connections: the \
                   proxy's own, the host's, and the host's minus no proxy's.",
            columns: vec![
                col("conn/s", cps, 0, Ratio::Both),
                col("p50 µs", p50, 0, Ratio::None),
                col("p99 µs", p99, 0, Ratio::None),
                col("proxy CPU ms / 1k", cpu_per_1k_conns, 1, Ratio::None),
                col("host CPU ms / 1k", host_per_1k_conns, 1, Ratio::None),
                added("added host ms / 1k", host_per_1k_conns, 1, Ratio::Floor),
            ],
        },
        Table {
            case: "rr",
            title: "Request/response, closed loop",
            note: "32 persistent connections, 64-byte ping-pong, each sending again as \
                   soon as it is answered: both cores saturated, so latency and CPU are \
                   much the scheduler's and swing between runs.",
            columns: vec![
                col("req/s", rps, 0, Ratio::Both),
                col("p50 µs", p50, 0, Ratio::None),
                col("p99 µs", p99, 0, Ratio::None),
                col("proxy CPU µs / req", cpu_us_per_request, 2, Ratio::None),
                col("host CPU µs / req", host_per_request, 2, Ratio::None),
                added("added host µs / req", host_per_request, 2, Ratio::Floor),
            ],
        },
        Table {
            case: "rr-rate",
            title: "Request/response, paced",
            note: "16 connections sending 64-byte requests on a fixed schedule at an \
                   offered rate that leaves the host about half idle (\"host busy\"); \
                   latency from each request's intended send time (no coordinated \
                   omission). \"added\" is paired by repetition with no proxy.",
            columns: vec![
                col("host busy %", host_busy_pct, 0, Ratio::None),
                col("p50 µs", p50, 0, Ratio::None),
                col("p99 µs", p99, 0, Ratio::None),
                col("p99.9 µs", p999, 0, Ratio::None),
                added("added p50 µs", p50, 0, Ratio::None),
                added("added p99 µs", p99, 0, Ratio::Reference),
                added("added p99.9 µs", p999, 0, Ratio::None),
                col("proxy CPU µs / req", cpu_us_per_request, 2, Ratio::None),
                added("added host µs / req", host_per_request, 2, Ratio::Floor),
            ],
        },
        Table {
            case: "idle",
            title: "Idle connections",
            note: "Connections held idle after their hello, on a proxy started afresh \
                   for the run; memory is the proxy's resident set growth (all its \
                   processes) divided by the connections held. Kernel socket memory \
                   is not in it.",
            columns: vec![
                col("held", established, 0, Ratio::None),
                col("RSS B / conn", rss_per_conn, 0, Ratio::Reference),
                col("RSS before MiB", rss_before_mib, 1, Ratio::None),
                col("threads before", threads_before, 0, Ratio::None),
                col("threads open", threads_open, 0, Ratio::None),
                col("fds / conn", fds_per_conn, 2, Ratio::None),
            ],
        },
    ]
}

fn charts() -> Vec<Chart> {
    let c = |file, case, title, metric, lower_is_better, added| Chart {
        file,
        case,
        title,
        metric,
        lower_is_better,
        added,
    };
    vec![
        c(
            "bulk-download-gbps.svg",
            "bulk-download",
            "Bulk download, Gbit/s",
            gbps,
            false,
            false,
        ),
        c(
            "bulk-download-host.svg",
            "bulk-download",
            "Bulk download, added host CPU s per GiB",
            host_per_gib,
            true,
            true,
        ),
        c(
            "bulk-upload-gbps.svg",
            "bulk-upload",
            "Bulk upload, Gbit/s",
            gbps,
            false,
            false,
        ),
        c(
            "bulk-upload-host.svg",
            "bulk-upload",
            "Bulk upload, added host CPU s per GiB",
            host_per_gib,
            true,
            true,
        ),
        c(
            "cps.svg",
            "cps",
            "Connections per second",
            cps,
            false,
            false,
        ),
        c(
            "cps-host.svg",
            "cps",
            "Added host CPU ms per 1,000 connections",
            host_per_1k_conns,
            true,
            true,
        ),
        c(
            "rr-rps.svg",
            "rr",
            "Closed-loop requests per second",
            rps,
            false,
            false,
        ),
        c(
            "rr-host.svg",
            "rr",
            "Closed loop, added host CPU µs per request",
            host_per_request,
            true,
            true,
        ),
        c(
            "rr-rate-host.svg",
            "rr-rate",
            "Paced, added host CPU µs per request",
            host_per_request,
            true,
            true,
        ),
        c(
            "rr-rate-p99.svg",
            "rr-rate",
            "Paced, added p99 µs",
            p99,
            true,
            true,
        ),
        c(
            "idle-rss.svg",
            "idle",
            "Idle connections, proxy RSS bytes per connection",
            rss_per_conn,
            true,
            false,
        ),
        c(
            "sweep-cpu.svg",
            "sweep-download",
            "Pipe size sweep, download, proxy CPU s per GiB",
            cpu_per_gib,
            true,
            false,
        ),
    ]
}

/// Runs the subcommand: reads `--results`, writes the charts under
/// `--charts`, prints the Markdown section.
///
/// # Errors
/// The results file cannot be read or holds a line that is not JSON; a
/// chart cannot be written.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("--results {}", args.results.display()))?;
    let results =
        Results::parse(&text).with_context(|| format!("--results {}", args.results.display()))?;
    std::fs::create_dir_all(&args.charts)
        .with_context(|| format!("--charts {}", args.charts.display()))?;
    let section = render(&results, args)?;
    print!("{section}");
    Ok(())
}

impl Results {
    fn parse(text: &str) -> anyhow::Result<Results> {
        let mut r = Results::default();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            match v.get("kind").and_then(Value::as_str) {
                Some("target") => {
                    let name = s("name");
                    if !r.targets.iter().any(|t| t.name == name) {
                        r.targets.push(Target {
                            name,
                            desc: s("desc"),
                            skipped: v.get("skipped").and_then(Value::as_str).map(str::to_string),
                        });
                    }
                }
                Some("run") => {
                    let result = v.get("result").filter(|x| x.is_object()).cloned();
                    let rep = v.get("rep").and_then(Value::as_u64).unwrap_or(0);
                    r.runs
                        .entry((s("case"), s("target")))
                        .or_default()
                        .push((rep, result));
                }
                _ => anyhow::bail!("line {}: no \"kind\" of target or run", i + 1),
            }
        }
        Ok(r)
    }

    fn results(&self, case: &str, target: &str) -> impl Iterator<Item = &Value> {
        self.runs
            .get(&(case.to_string(), target.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_ref())
    }

    fn stat(&self, case: &str, target: &str, metric: Metric) -> Option<Stat> {
        Stat::of(self.results(case, target).filter_map(metric).collect())
    }

    /// What `target` adds over `base`: for each repetition both have a
    /// figure in, this one's minus the base's; the median and range of
    /// those differences.
    fn added(&self, case: &str, target: &str, base: &str, metric: Metric) -> Option<Stat> {
        let t = self.runs.get(&(case.to_string(), target.to_string()))?;
        let b = self.runs.get(&(case.to_string(), base.to_string()))?;
        let diffs = t
            .iter()
            .filter_map(|(rep, v)| {
                let tv = metric(v.as_ref()?)?;
                let bv = b
                    .iter()
                    .find(|(r, _)| r == rep)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(metric)?;
                Some(tv - bv)
            })
            .collect();
        Stat::of(diffs)
    }

    /// A column's figure for `target`: plain, or added over `base`.
    fn figure(
        &self,
        case: &str,
        target: &str,
        base: &str,
        metric: Metric,
        added: bool,
    ) -> Option<Stat> {
        if !added {
            self.stat(case, target, metric)
        } else if target == base {
            None
        } else {
            self.added(case, target, base, metric)
        }
    }

    /// "ok runs / runs", with the errors counted, for one (case, target).
    fn health(&self, case: &str, target: &str) -> String {
        let Some(runs) = self.runs.get(&(case.to_string(), target.to_string())) else {
            return "–".into();
        };
        let ok = self
            .results(case, target)
            .filter(|r| r.get("status").and_then(Value::as_str) == Some("ok"))
            .count();
        let errors: f64 = self
            .results(case, target)
            .filter_map(|r| at(r, &["errors", "total"]))
            .sum();
        let mut s = format!("{ok}/{}", runs.len());
        if errors > 0.0 {
            let _ = write!(s, ", {errors} errors");
        }
        s
    }

    fn has_case(&self, case: &str) -> bool {
        self.runs.keys().any(|(c, _)| c == case)
    }

    fn targets_of(&self, case: &str) -> Vec<&Target> {
        self.targets
            .iter()
            .filter(|t| {
                t.skipped.is_some() || self.runs.contains_key(&(case.to_string(), t.name.clone()))
            })
            .filter(|t| !t.name.starts_with("pipe-"))
            .collect()
    }
}

/// A figure with its spread: `12.3 [11.9–12.8]`.
fn fmt_stat(s: Option<Stat>, digits: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.min == s.max => fmt_num(s.median, digits),
        Some(s) => format!(
            "{} [{}–{}]",
            fmt_num(s.median, digits),
            fmt_num(s.min, digits),
            fmt_num(s.max, digits)
        ),
    }
}

fn fmt_num(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    if digits > 0 || v.abs() < 1_000.0 {
        return s;
    }
    // Thousands separators for large integers.
    let (sign, body) = s.strip_prefix('-').map_or(("", s.as_str()), |b| ("-", b));
    let mut out = String::new();
    for (i, ch) in body.chars().enumerate() {
        if i > 0 && (body.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn fmt_ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        // A ratio of a negative figure (an "added" latency below no proxy's,
        // memory that shrank) means nothing.
        (Some(n), Some(d)) if d > 0.0 && n > 0.0 && n.is_finite() && d.is_finite() => {
            format!("{:.2}×", n / d)
        }
        _ => "–".into(),
    }
}

fn render(r: &Results, args: &ReportArgs) -> anyhow::Result<String> {
    let base = args.baseline.as_str();
    let refr = args.reference.as_str();
    let floor = args.floor.as_str();
    let mut md = String::new();

    md.push_str("### What ran\n\n| target | configuration |\n|---|---|\n");
    for t in &r.targets {
        let what = match &t.skipped {
            Some(why) => format!("**skipped**: {why}"),
            None => t.desc.clone(),
        };
        let _ = writeln!(md, "| {} | {} |", t.name, what.replace('|', "\\|"));
    }
    let _ = writeln!(
        md,
        "\nRatios: \"÷ {base}\" is this row's median over {base}'s; \"{refr} ÷\" is \
         {refr}'s median over this row's (above 1: {refr} has more of it, so for \
         Gbit/s and requests that is better, for CPU, memory and latency worse); \
         \"÷ {floor}\" is this row's median over the floor forwarder's (above 1: \
         this costs the host more than the floor).\n"
    );
    host_summary(r, args, &mut md);
    goals(r, args, &mut md);

    for table in tables() {
        if !r.has_case(table.case) {
            continue;
        }
        let _ = writeln!(md, "### {}\n\n{}\n", table.title, table.note);
        let mut head = String::from("| target |");
        let mut rule = String::from("|---|");
        for c in &table.columns {
            let _ = write!(head, " {} |", c.title);
            rule.push_str("---|");
            match c.ratio {
                Ratio::None => {}
                Ratio::Both => {
                    let _ = write!(head, " ÷ {base} | {refr} ÷ |");
                    rule.push_str("---|---|");
                }
                Ratio::Reference => {
                    let _ = write!(head, " {refr} ÷ |");
                    rule.push_str("---|");
                }
                Ratio::Floor => {
                    let _ = write!(head, " ÷ {floor} |");
                    rule.push_str("---|");
                }
            }
        }
        let _ = writeln!(md, "{head} runs ok |\n{rule}---|");
        for t in r.targets_of(table.case) {
            if let Some(why) = &t.skipped {
                let _ = writeln!(md, "| {} | skipped: {} |", t.name, why.replace('|', "\\|"));
                continue;
            }
            let mut row = format!("| {} |", t.name);
            for c in &table.columns {
                let fig = |target: &str| r.figure(table.case, target, base, c.metric, c.added);
                let this = fig(&t.name);
                let _ = write!(row, " {} |", fmt_stat(this, c.digits));
                let med = this.map(|s| s.median);
                if c.ratio == Ratio::Both {
                    let b = r.stat(table.case, base, c.metric).map(|s| s.median);
                    let _ = write!(row, " {} |", fmt_ratio(med, b));
                }
                if matches!(c.ratio, Ratio::Both | Ratio::Reference) {
                    let cell = if t.name == refr || t.name == base {
                        "–".to_string()
                    } else {
                        fmt_ratio(fig(refr).map(|s| s.median), med)
                    };
                    let _ = write!(row, " {cell} |");
                }
                if c.ratio == Ratio::Floor {
                    let cell = if t.name == floor || t.name == base {
                        "–".to_string()
                    } else {
                        fmt_ratio(med, fig(floor).map(|s| s.median))
                    };
                    let _ = write!(row, " {cell} |");
                }
            }
            let _ = writeln!(md, "{row} {} |", r.health(table.case, &t.name));
        }
        md.push('\n');
        for ch in charts().iter().filter(|ch| ch.case == table.case) {
            md.push_str(&chart(r, ch, args, None)?);
        }
        md.push('\n');
    }

    engines(r, &mut md);
    sweep(r, args, &mut md)?;
    Ok(md)
}

/// One table of what each target adds to the host's busy time over no
/// proxy, every workload side by side, with the ratio to the floor.
fn host_summary(r: &Results, args: &ReportArgs, md: &mut String) {
    let base = args.baseline.as_str();
    let floor = args.floor.as_str();
    let cols: [(&str, &str, Metric, usize); 6] = [
        ("bulk-download", "bulk down s/GiB", host_per_gib, 3),
        ("bulk-upload", "bulk up s/GiB", host_per_gib, 3),
        ("cps", "cps ms / 1k conn", host_per_1k_conns, 1),
        ("rr", "closed-loop rr µs / req", host_per_request, 2),
        ("rr-rate", "paced rr µs / req", host_per_request, 2),
        ("rr-rate", "paced rr added p99 µs", p99, 0),
    ];
    let cols: Vec<_> = cols
        .into_iter()
        .filter(|c| {
            r.targets
                .iter()
                .any(|t| t.name != base && r.added(c.0, &t.name, base, c.2).is_some())
        })
        .collect();
    if cols.is_empty() {
        return;
    }
    md.push_str(
        "### What the host pays: added over no proxy\n\nThe whole host's busy CPU time \
         (the window's wall-clock time on every CPU minus the idle and iowait time of \
         `/proc/stat`) per unit of work, minus no proxy's in the same repetition; median \
         [min–max] over the repetitions, then in parentheses the median ÷ the floor \
         forwarder's. The last column is latency, not CPU.\n\n| target |",
    );
    for c in &cols {
        let _ = write!(md, " {} |", c.1);
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(cols.len()));
    md.push('\n');
    for t in &r.targets {
        if t.skipped.is_some() || t.name == base || t.name.starts_with("pipe-") {
            continue;
        }
        let _ = write!(md, "| {} |", t.name);
        for &(case, _, metric, digits) in &cols {
            let this = r.added(case, &t.name, base, metric);
            let mut cell = fmt_stat(this, digits);
            if t.name != floor {
                let ratio = fmt_ratio(
                    this.map(|s| s.median),
                    r.added(case, floor, base, metric).map(|s| s.median),
                );
                if ratio != "–" {
                    let _ = write!(cell, " ({ratio})");
                }
            }
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
}

/// What a target is, for the goals: the reference (meshgate's default),
/// another meshgate engine (`bpf` when it needs BPF: judged by its own
/// goals), the floor, no proxy, or a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Reference,
    Engine { bpf: bool },
    Floor,
    Baseline,
    Peer,
}

fn role(name: &str, args: &ReportArgs) -> Role {
    if name == args.reference {
        Role::Reference
    } else if name == args.baseline {
        Role::Baseline
    } else if name == args.floor {
        Role::Floor
    } else if name.starts_with("meshgate") || name.starts_with("pipe-") {
        Role::Engine {
            bpf: name.contains("sockmap"),
        }
    } else {
        Role::Peer
    }
}

/// The lowest median of an added figure among the running targets that
/// `pick` selects, with the target's name.
fn lowest_added(
    r: &Results,
    case: &str,
    base: &str,
    metric: Metric,
    pick: impl Fn(&str) -> bool,
) -> Option<(String, Stat)> {
    r.targets
        .iter()
        .filter(|t| t.skipped.is_none() && !t.name.starts_with("pipe-") && pick(&t.name))
        .filter_map(|t| Some((t.name.clone(), r.added(case, &t.name, base, metric)?)))
        .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

/// The goals table: the reference (meshgate's default engine) judged on
/// added host CPU (the lowest of every target but the floor, within 15 % of
/// the floor), added p99 at the paced rate (at most half the best peer's,
/// range no wider than the median) and idle threads (no growth), from this
/// run's medians.
fn goals(r: &Results, args: &ReportArgs, md: &mut String) {
    let base = args.baseline.as_str();
    let refr = args.reference.as_str();
    let floor = args.floor.as_str();
    let is = |want: fn(Role) -> bool| move |n: &str| want(role(n, args));
    let cpu_rows: [(&str, &str, Metric, usize); 5] = [
        ("bulk-download", "bulk download, s/GiB", host_per_gib, 3),
        ("bulk-upload", "bulk upload, s/GiB", host_per_gib, 3),
        ("cps", "churn (cps), ms / 1k conn", host_per_1k_conns, 1),
        ("rr", "closed-loop rr, µs / req", host_per_request, 2),
        ("rr-rate", "paced rr, µs / req", host_per_request, 2),
    ];
    let named = |x: Option<(String, Stat)>, digits: usize| {
        x.map_or("–".to_string(), |(n, s)| {
            format!("{n} {}", fmt_stat(Some(s), digits))
        })
    };
    let mut rows = Vec::new();
    for (case, what, metric, digits) in cpu_rows {
        let Some(this) = r.added(case, refr, base, metric) else {
            continue;
        };
        let engine = lowest_added(
            r,
            case,
            base,
            metric,
            is(|x| x == Role::Engine { bpf: false }),
        );
        let peer = lowest_added(r, case, base, metric, is(|x| x == Role::Peer));
        let fl = r.added(case, floor, base, metric);
        let mut verdict = Vec::new();
        match &peer {
            Some((n, p)) if p.median < this.median => verdict.push(format!(
                "not lowest: {n} {:.0} % below",
                (1.0 - p.median / this.median) * 100.0
            )),
            _ => {}
        }
        match fl.map(|f| f.median) {
            Some(f) if f > 0.0 && this.median > 1.15 * f => {
                verdict.push(format!("{:.2}× the floor, above 1.15×", this.median / f))
            }
            Some(f) if f > 0.0 => verdict.push(format!("{:.2}× the floor", this.median / f)),
            _ => {}
        }
        let met = peer.as_ref().map_or(true, |(_, p)| p.median >= this.median)
            && fl.map_or(true, |f| f.median <= 0.0 || this.median <= 1.15 * f.median);
        rows.push(format!(
            "| {what} | {} | {} | {} | {} | {}{} |",
            fmt_stat(Some(this), digits),
            named(engine, digits),
            named(peer, digits),
            fmt_stat(fl, digits),
            if met { "**met**; " } else { "missed: " },
            verdict.join("; ")
        ));
    }
    if let Some(this) = r.added("rr-rate", refr, base, p99) {
        let engine = lowest_added(
            r,
            "rr-rate",
            base,
            p99,
            is(|x| x == Role::Engine { bpf: false }),
        );
        let peer = lowest_added(r, "rr-rate", base, p99, is(|x| x == Role::Peer));
        let fl = r.added("rr-rate", floor, base, p99);
        let width = this.max - this.min;
        let stable = width <= this.median.abs();
        let goal = peer.as_ref().map(|(_, p)| p.median / 2.0);
        let low = goal.is_some_and(|g| this.median <= g);
        let mut verdict = vec![match goal {
            Some(g) => format!("goal {} µs (half the best peer's)", fmt_num(g, 0)),
            None => "no peer ran".to_string(),
        }];
        // A ratio to a negative or zero added p99 (a peer below no proxy in
        // the noise) means nothing.
        if let Some((_, p)) = peer.as_ref().filter(|(_, p)| p.median > 0.0) {
            verdict.push(format!("{:.1}× the best peer", this.median / p.median));
        }
        verdict.push(format!(
            "range {} {} the median",
            fmt_num(width, 0),
            if stable { "within" } else { "wider than" }
        ));
        rows.push(format!(
            "| paced added p99, µs | {} | {} | {} | {} | {}{} |",
            fmt_stat(Some(this), 0),
            named(engine, 0),
            named(peer, 0),
            fmt_stat(fl, 0),
            if low && stable {
                "**met**; "
            } else {
                "missed: "
            },
            verdict.join("; ")
        ));
    }
    if let Some(rss) = r.stat("idle", refr, rss_per_conn) {
        let before = r.stat("idle", refr, threads_before).map(|s| s.max);
        let open = r.stat("idle", refr, threads_open).map(|s| s.max);
        let peer = r
            .targets
            .iter()
            .filter(|t| t.skipped.is_none() && role(&t.name, args) == Role::Peer)
            .filter_map(|t| Some((t.name.clone(), r.stat("idle", &t.name, rss_per_conn)?)))
            .min_by(|a, b| a.1.median.total_cmp(&b.1.median));
        let verdict = match (before, open) {
            (Some(b), Some(o)) if o <= b => {
                format!("threads {b:.0} before and {o:.0} open: no growth")
            }
            (Some(b), Some(o)) => format!("missed: threads {b:.0} before, {o:.0} open"),
            _ => "threads not measured".to_string(),
        };
        rows.push(format!(
            "| idle memory, B / conn | {} | {} | {} | {} | {verdict} |",
            fmt_stat(Some(rss), 0),
            named(
                r.targets
                    .iter()
                    .filter(|t| t.skipped.is_none()
                        && role(&t.name, args) == Role::Engine { bpf: false })
                    .filter_map(|t| Some((t.name.clone(), r.stat("idle", &t.name, rss_per_conn)?)))
                    .min_by(|a, b| a.1.median.total_cmp(&b.1.median)),
                0
            ),
            named(peer, 0),
            fmt_stat(r.stat("idle", floor, rss_per_conn), 0),
        ));
    }
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        md,
        "### Against the goals: {refr}\n\nThe reference, {refr}, judged by this run's \
         medians: added host CPU the lowest of every target but the floor \
         and within 15 % of the floor on every workload; added p99 at the paced rate at \
         most half the best peer's, with a range (max − min) no wider than the median; \
         idle threads no more with connections open than before. \"Best\" meshgate and \
         peer are the lowest median among the other meshgate targets that need no BPF \
         (engines and `--variant`s) and among the peers. Ranges are [min–max] over \
         the repetitions; a verdict on a gap inside them is not resolved by the run.\n\n\
         | goal | {refr} | best other meshgate | best peer | floor | verdict |\n\
         |---|---|---|---|---|---|\n"
    );
    for row in rows {
        md.push_str(&row);
        md.push('\n');
    }
    md.push('\n');
}

/// Writes one chart and returns the Markdown image line for it.
fn chart(r: &Results, ch: &Chart, args: &ReportArgs, only: Option<&str>) -> anyhow::Result<String> {
    let mut bars = Vec::new();
    for t in &r.targets {
        if t.skipped.is_some() || only.is_some_and(|p| !t.name.starts_with(p)) {
            continue;
        }
        if only.is_none() && t.name.starts_with("pipe-") {
            continue;
        }
        let s = r.figure(ch.case, &t.name, &args.baseline, ch.metric, ch.added);
        if let Some(s) = s {
            bars.push(Bar {
                label: t.name.clone(),
                median: s.median,
                min: s.min,
                max: s.max,
                highlight: t.name == args.reference
                    || t.name.starts_with("meshgate")
                    || t.name == args.floor,
            });
        }
    }
    if bars.is_empty() {
        return Ok(String::new());
    }
    let mut note = if ch.lower_is_better {
        "lower is better; whiskers: min–max".to_string()
    } else {
        "higher is better; whiskers: min–max".to_string()
    };
    let off = off_scale(&mut bars);
    if !off.is_empty() {
        let _ = write!(note, "; off the scale: {}", off.join(", "));
    }
    let path: PathBuf = args.charts.join(ch.file);
    std::fs::write(&path, svg::bar_chart(ch.title, &note, &bars))
        .with_context(|| format!("writing {}", path.display()))?;
    let link = Path::new(&args.charts_link).join(ch.file);
    Ok(format!("![{}]({})\n", ch.title, link.display()))
}

/// Takes out the bars more than 10 times the median of all bars (a broken
/// run would flatten every other bar) and returns them as "name (value)".
fn off_scale(bars: &mut Vec<Bar>) -> Vec<String> {
    let Some(mid) = Stat::of(bars.iter().map(|b| b.median).collect()).map(|s| s.median) else {
        return Vec::new();
    };
    if mid <= 0.0 {
        return Vec::new();
    }
    let mut off = Vec::new();
    bars.retain(|b| {
        let keep = b.median <= 10.0 * mid;
        if !keep {
            off.push(format!("{} ({})", b.label, fmt_num(b.median, 2)));
        }
        keep
    });
    off
}

/// meshgate's engines against each other, one headline figure per case.
fn engines(r: &Results, md: &mut String) {
    let engines: Vec<&Target> = r
        .targets
        .iter()
        .filter(|t| t.name.starts_with("meshgate") && t.skipped.is_none())
        .collect();
    if engines.len() < 2 {
        return;
    }
    let rows: [(&str, &str, Metric, bool, usize); 9] = [
        ("bulk-download", "Gbit/s", gbps, false, 2),
        ("bulk-download", "host CPU s/GiB", host_per_gib, true, 3),
        ("bulk-upload", "Gbit/s", gbps, false, 2),
        ("bulk-upload", "host CPU s/GiB", host_per_gib, true, 3),
        ("cps", "host CPU ms / 1k conn", host_per_1k_conns, true, 1),
        ("rr", "host CPU µs / req", host_per_request, true, 2),
        ("rr-rate", "host CPU µs / req", host_per_request, true, 2),
        ("rr-rate", "p99 µs", p99, true, 0),
        ("idle", "RSS B / conn", rss_per_conn, true, 0),
    ];
    md.push_str("### meshgate's forwarding engines\n\nMedians; the best of each row in bold.\n\n| case | figure |");
    for e in &engines {
        let _ = write!(md, " {} |", e.name);
    }
    md.push_str("\n|---|---|");
    md.push_str(&"---|".repeat(engines.len()));
    md.push('\n');
    for (case, figure, metric, lower, digits) in rows {
        let meds: Vec<Option<f64>> = engines
            .iter()
            .map(|e| r.stat(case, &e.name, metric).map(|s| s.median))
            .collect();
        let best = meds
            .iter()
            .flatten()
            .copied()
            .reduce(|a, b| if (b < a) == lower { b } else { a });
        let _ = write!(md, "| {case} | {figure} |");
        for m in meds {
            let cell = m.map_or("–".to_string(), |v| fmt_num(v, digits));
            if m.is_some() && m == best {
                let _ = write!(md, " **{cell}** |");
            } else {
                let _ = write!(md, " {cell} |");
            }
        }
        md.push('\n');
    }
    md.push('\n');
}

/// The pipe-size sweep of the splice engine.
fn sweep(r: &Results, args: &ReportArgs, md: &mut String) -> anyhow::Result<()> {
    if !r.has_case("sweep-download") && !r.has_case("sweep-upload") {
        return Ok(());
    }
    md.push_str(
        "### Pipe size (splice engine, `--pipe-size`)\n\nBulk, 4 streams, meshgate \
         `--forward splice` with each pipe size.\n\n| pipe | download Gbit/s | download CPU s/GiB \
         | upload Gbit/s | upload CPU s/GiB | runs ok |\n|---|---|---|---|---|---|\n",
    );
    for t in r.targets.iter().filter(|t| t.name.starts_with("pipe-")) {
        let size = t
            .name
            .trim_start_matches("pipe-")
            .parse::<u64>()
            .unwrap_or(0);
        let label = if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        };
        if let Some(why) = &t.skipped {
            let _ = writeln!(md, "| {label} | skipped: {why} |");
            continue;
        }
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            fmt_stat(r.stat("sweep-download", &t.name, gbps), 2),
            fmt_stat(r.stat("sweep-download", &t.name, cpu_per_gib), 3),
            fmt_stat(r.stat("sweep-upload", &t.name, gbps), 2),
            fmt_stat(r.stat("sweep-upload", &t.name, cpu_per_gib), 3),
            r.health("sweep-download", &t.name),
        );
    }
    md.push('\n');
    for ch in charts().iter().filter(|ch| ch.case.starts_with("sweep")) {
        md.push_str(&chart(r, ch, args, Some("pipe-"))?);
    }
    md.push('\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(gbps: f64, cpu: f64, host: f64) -> String {
        format!(
            r#"{{"status":"ok","errors":{{"total":0}},"requests":0,"throughput":{{"gbit_per_sec":{gbps}}},"proxy":{{"cpu_secs_per_gib":{cpu}}},"host":{{"busy_secs_per_gib":{host}}}}}"#
        )
    }

    fn sample() -> String {
        let mut s = String::new();
        for (name, skipped) in [
            ("no-proxy", "null"),
            ("floor", "null"),
            ("meshgate", "null"),
            ("envoy", "\"not installed\""),
        ] {
            let _ = writeln!(
                s,
                r#"{{"kind":"target","name":"{name}","desc":"d","skipped":{skipped}}}"#
            );
        }
        // Interleaved as bench.sh runs them: every target once per repetition.
        for (rep, t, g, c, h) in [
            (1, "no-proxy", 20.0, 0.0, 1.0),
            (1, "floor", 15.0, 0.1, 1.3),
            (1, "meshgate", 10.0, 0.2, 1.5),
            (2, "no-proxy", 22.0, 0.0, 2.0),
            (2, "floor", 16.0, 0.1, 2.2),
            (2, "meshgate", 12.0, 0.1, 2.4),
            (3, "no-proxy", 21.0, 0.0, 1.2),
            (3, "floor", 17.0, 0.1, 1.4),
            (3, "meshgate", 11.0, 0.3, 1.6),
        ] {
            let _ = writeln!(
                s,
                r#"{{"kind":"run","target":"{t}","case":"bulk-download","rep":{rep},"exit":0,"result":{}}}"#,
                result(g, c, h)
            );
        }
        s.push_str(
            r#"{"kind":"run","target":"meshgate","case":"cps","rep":1,"exit":1,"result":null}"#,
        );
        s
    }

    #[test]
    fn medians_and_spread_come_from_the_runs() {
        assert_eq!(
            Stat::of(vec![3.0, 1.0, 2.0]),
            Some(Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(Stat::of(vec![4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Stat::of(vec![f64::NAN, 5.0]).map(|s| s.median), Some(5.0));
        assert_eq!(Stat::of(vec![]), None);
        let r = Results::parse(&sample()).expect("parses");
        let s = r.stat("bulk-download", "meshgate", gbps).expect("has runs");
        assert_eq!((s.median, s.min, s.max), (11.0, 10.0, 12.0));
        assert_eq!(r.health("cps", "meshgate"), "0/1");
        assert_eq!(fmt_num(123456.0, 0), "123,456");
        assert_eq!(fmt_ratio(Some(11.0), Some(22.0)), "0.50×");
        assert_eq!(fmt_ratio(Some(-1.0), Some(2.0)), "–");
    }

    #[test]
    fn added_figures_are_paired_by_repetition() {
        let r = Results::parse(&sample()).expect("parses");
        // meshgate - no proxy per repetition: 0.5, 0.4, 0.4 (not the
        // difference of the medians, 1.5 - 1.2 = 0.3).
        let s = r
            .added("bulk-download", "meshgate", "no-proxy", host_per_gib)
            .expect("paired");
        assert!((s.median - 0.4).abs() < 1e-9, "{s:?}");
        assert!(
            (s.min - 0.4).abs() < 1e-9 && (s.max - 0.5).abs() < 1e-9,
            "{s:?}"
        );
        let f = r
            .added("bulk-download", "floor", "no-proxy", host_per_gib)
            .expect("paired");
        assert!((f.median - 0.2).abs() < 1e-9, "{f:?}");
        // The baseline adds nothing to itself; a case without the baseline
        // has no added figure.
        assert_eq!(
            r.figure("bulk-download", "no-proxy", "no-proxy", host_per_gib, true),
            None
        );
        assert_eq!(r.added("cps", "meshgate", "no-proxy", host_per_gib), None);
    }

    #[test]
    fn the_section_has_ratios_skips_and_charts() {
        let dir =
            std::env::temp_dir().join(format!("meshgate-bench-report-{}", std::process::id()));
        let args = ReportArgs {
            results: PathBuf::new(),
            charts: dir.clone(),
            charts_link: "bench/charts".into(),
            reference: "meshgate".into(),
            baseline: "no-proxy".into(),
            floor: "floor".into(),
        };
        std::fs::create_dir_all(&dir).expect("temp dir");
        let r = Results::parse(&sample()).expect("parses");
        let md = render(&r, &args).expect("renders");
        assert!(
            md.contains(
                "| meshgate | 11.00 [10.00–12.00] | 0.52× | – | 0.200 [0.100–0.300] \
                 | 1.600 [1.500–2.400] | 0.400 [0.400–0.500] | 2.00× | 3/3 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| floor | 16.00 [15.00–17.00] | 0.76× | 0.69× |"),
            "{md}"
        );
        assert!(
            md.contains("| meshgate | 0.400 [0.400–0.500] (2.00×) |"),
            "{md}"
        );
        assert!(md.contains("| envoy | skipped: not installed |"), "{md}");
        assert!(!md.contains("cps ms / 1k conn |"), "no cps figures: {md}");
        assert!(
            md.contains("![Bulk download, Gbit/s](bench/charts/bulk-download-gbps.svg)"),
            "{md}"
        );
        let svg =
            std::fs::read_to_string(dir.join("bulk-download-host.svg")).expect("chart written");
        assert!(
            svg.starts_with("<svg") && svg.contains("meshgate") && !svg.contains("no-proxy"),
            "{svg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn paced(p99: f64, host_us: f64) -> String {
        format!(
            r#"{{"status":"ok","errors":{{"total":0}},"requests":1000,"latency_us":{{"p50":50,"p99":{p99},"p999":900}},"host":{{"busy_us_per_request":{host_us},"busy_share":0.5}}}}"#
        )
    }

    #[test]
    fn the_goals_table_judges_the_reference_against_peers_and_floor() {
        let mut s = String::new();
        for name in [
            "no-proxy",
            "floor",
            "meshgate",
            "meshgate-copy",
            "meshgate-sockmap",
            "nginx",
        ] {
            let _ = writeln!(
                s,
                r#"{{"kind":"target","name":"{name}","desc":"d","skipped":null}}"#
            );
        }
        // (rep, target, p99 µs, host µs per request); no proxy: p99 100,
        // 20 µs per request.
        for (rep, t, p, h) in [
            (1, "no-proxy", 100.0, 20.0),
            (2, "no-proxy", 100.0, 20.0),
            (3, "no-proxy", 100.0, 20.0),
            (1, "floor", 300.0, 60.0),
            (2, "floor", 300.0, 60.0),
            (3, "floor", 300.0, 60.0),
            // meshgate: added p99 150, 160, 400 (range 250 > median 160);
            // added host 40, 42, 44 (1.05x the floor's 40).
            (1, "meshgate", 250.0, 60.0),
            (2, "meshgate", 260.0, 62.0),
            (3, "meshgate", 500.0, 64.0),
            (1, "meshgate-copy", 200.0, 58.0),
            (2, "meshgate-copy", 220.0, 58.0),
            (3, "meshgate-copy", 240.0, 58.0),
            // BPF: left out of "best other meshgate".
            (1, "meshgate-sockmap", 110.0, 30.0),
            (2, "meshgate-sockmap", 110.0, 30.0),
            (3, "meshgate-sockmap", 110.0, 30.0),
            // nginx: added p99 200, added host 41 (below meshgate's 42).
            (1, "nginx", 300.0, 61.0),
            (2, "nginx", 300.0, 61.0),
            (3, "nginx", 300.0, 61.0),
        ] {
            let _ = writeln!(
                s,
                r#"{{"kind":"run","target":"{t}","case":"rr-rate","rep":{rep},"exit":0,"result":{}}}"#,
                paced(p, h)
            );
        }
        let r = Results::parse(&s).expect("parses");
        let args = ReportArgs {
            results: PathBuf::new(),
            charts: std::env::temp_dir(),
            charts_link: "bench/charts".into(),
            reference: "meshgate".into(),
            baseline: "no-proxy".into(),
            floor: "floor".into(),
        };
        let mut md = String::new();
        goals(&r, &args, &mut md);
        assert!(md.contains("### Against the goals: meshgate"), "{md}");
        assert!(
            md.contains(
                "| paced rr, µs / req | 42.00 [40.00–44.00] | meshgate-copy 38.00 | \
                 nginx 41.00 | 40.00 | missed: not lowest: nginx 2 % below; 1.05× the floor |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| paced added p99, µs | 160 [150–400] | meshgate-copy 120 [100–140] | \
                 nginx 200 | 200 | missed: goal 100 µs (half the best peer's); 0.8× the \
                 best peer; range 250 wider than the median |"
            ),
            "{md}"
        );
        // No bulk, churn or idle runs: no rows for them.
        assert!(!md.contains("bulk download"), "{md}");
        assert!(!md.contains("idle memory"), "{md}");
        // The engines table starts with the reference.
        let mut eng = String::new();
        engines(&r, &mut eng);
        assert!(
            eng.contains("| case | figure | meshgate | meshgate-copy | meshgate-sockmap |"),
            "{eng}"
        );
    }

    #[test]
    fn a_bar_far_off_the_others_is_named_instead_of_drawn() {
        let bar = |label: &str, v: f64| Bar {
            label: label.into(),
            median: v,
            min: v,
            max: v,
            highlight: false,
        };
        let mut bars = vec![bar("a", 0.5), bar("b", 0.6), bar("broken", 520.0)];
        assert_eq!(off_scale(&mut bars), vec!["broken (520.00)".to_string()]);
        assert_eq!(bars.len(), 2);
        let mut fine = vec![bar("a", 0.5), bar("b", 4.0)];
        assert!(off_scale(&mut fine).is_empty());
        assert_eq!(fine.len(), 2);
    }
}
