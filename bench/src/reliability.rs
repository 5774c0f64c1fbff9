//! `meshgate-bench reliability-charts`: RELIABILITY.md's load and memory
//! figures, kept as data in `bench/charts/reliability.json`, drawn as SVG bar
//! charts with `svg.rs`. No measuring here: the figures come from the runs
//! RELIABILITY.md describes (`scripts/load.sh` and one gateway holding 9,000
//! idle connections), typed into the data file beside its tables.

use anyhow::Context as _;
use serde::Deserialize;

use crate::cli::ReliabilityChartsArgs;
use crate::svg::{self, Bar};

/// The data file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// `scripts/load.sh`, one entry per engine and forwarding mode.
    pub load: Vec<LoadRun>,
    /// One gateway, 9,000 idle connections held and closed.
    pub give_back: Vec<GiveBack>,
}

/// One `scripts/load.sh` run: RSS of the six gateways summed, in MiB.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRun {
    /// Engine and forwarding mode, e.g. `io_uring, splice`.
    pub mode: String,
    /// After the warm-up.
    pub baseline_mib: f64,
    /// With 50,000 connections held.
    pub held_mib: f64,
    /// After the first hold closed.
    pub after_hold_mib: f64,
    /// After the churn of 1,000,000 short connections.
    pub after_churn_mib: f64,
    /// After the second hold closed.
    pub after_second_hold_mib: f64,
    /// How long the churn took.
    pub churn_secs: f64,
}

/// RSS of one gateway before and after holding 9,000 idle connections, MiB.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiveBack {
    /// Engine and forwarding mode.
    pub mode: String,
    /// `[before, after]` with a data plane that kept a burst's memory
    /// (39a62bf); absent where not measured.
    pub without_give_back_mib: Option<[f64; 2]>,
    /// `[before, after]` with the shard giving memory back when it empties.
    pub with_give_back_mib: [f64; 2],
}

/// Reads the data file and writes the charts into `--charts`.
pub fn run(args: &ReliabilityChartsArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("--data {}", args.data.display()))?;
    let data: Data =
        serde_json::from_str(&text).with_context(|| format!("--data {}", args.data.display()))?;
    std::fs::create_dir_all(&args.charts)
        .with_context(|| format!("--charts {}", args.charts.display()))?;
    for (name, svg) in charts(&data)? {
        let path = args.charts.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The charts as (file name, SVG text).
///
/// # Errors
/// When a section of the data is empty or a figure is negative or not
/// finite, naming it.
pub fn charts(data: &Data) -> anyhow::Result<Vec<(&'static str, String)>> {
    anyhow::ensure!(!data.load.is_empty(), "load: no runs");
    anyhow::ensure!(!data.give_back.is_empty(), "give_back: no entries");
    let mut rss = Vec::new();
    let mut churn = Vec::new();
    for (i, r) in data.load.iter().enumerate() {
        for (phase, v, highlight) in [
            ("baseline", r.baseline_mib, false),
            ("50,000 held", r.held_mib, false),
            ("after the hold", r.after_hold_mib, true),
            ("after the churn", r.after_churn_mib, true),
            ("after the 2nd hold", r.after_second_hold_mib, true),
        ] {
            rss.push(bar(format!("{}: {phase}", r.mode), v, highlight, || {
                format!("load[{i}] ({}) {phase}", r.mode)
            })?);
        }
        churn.push(bar(r.mode.clone(), r.churn_secs, true, || {
            format!("load[{i}] ({}) churn_secs", r.mode)
        })?);
    }
    let mut left = Vec::new();
    for (i, g) in data.give_back.iter().enumerate() {
        if let Some([before, after]) = g.without_give_back_mib {
            left.push(bar(
                format!("{}, without give-back", g.mode),
                after - before,
                false,
                || format!("give_back[{i}] ({}) without_give_back_mib", g.mode),
            )?);
        }
        let [before, after] = g.with_give_back_mib;
        left.push(bar(
            format!("{}, with give-back", g.mode),
            after - before,
            true,
            || format!("give_back[{i}] ({}) with_give_back_mib", g.mode),
        )?);
    }
    Ok(vec![
        (
            "load-rss.svg",
            svg::bar_chart(
                "Load run: RSS of the six gateways, MiB",
                "scripts/load.sh; each \"after\" bar (blue) is back at its baseline",
                &rss,
            ),
        ),
        (
            "load-churn.svg",
            svg::bar_chart(
                "Churn of 1,000,000 short connections, seconds",
                "scripts/load.sh phase (b), 0 errors in every run; lower is better",
                &churn,
            ),
        ),
        (
            "give-back.svg",
            svg::bar_chart(
                "RSS left after 9,000 idle connections closed, MiB",
                "one gateway, 2 shards, RSS after minus before; lower is better",
                &left,
            ),
        ),
    ])
}

/// One bar without spread; refuses a negative or non-finite figure.
fn bar(
    label: String,
    value: f64,
    highlight: bool,
    what: impl Fn() -> String,
) -> anyhow::Result<Bar> {
    anyhow::ensure!(
        value.is_finite() && value >= 0.0,
        "{}: {value} is not a figure a bar can show (negative or not finite)",
        what()
    );
    Ok(Bar {
        label,
        median: value,
        min: value,
        max: value,
        highlight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The data file that ships beside the charts.
    fn shipped_data_path() -> &'static Path {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/reliability.json"
        ))
    }

    fn shipped() -> Data {
        let text = std::fs::read_to_string(shipped_data_path()).expect("reliability.json ships");
        serde_json::from_str(&text).expect("reliability.json parses")
    }

    #[test]
    fn the_shipped_data_draws_every_row_and_matches_the_committed_charts() {
        let data = shipped();
        let charts = charts(&data).expect("charts");
        let rows = |svg: &str| svg.matches("<rect x=").count();
        assert_eq!(rows(&charts[0].1), 5 * data.load.len());
        assert_eq!(rows(&charts[1].1), data.load.len());
        let before = data
            .give_back
            .iter()
            .filter(|g| g.without_give_back_mib.is_some())
            .count();
        assert_eq!(rows(&charts[2].1), data.give_back.len() + before);
        for (name, svg) in &charts {
            let path = shipped_data_path().with_file_name(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == *svg,
                "{} is not what the data draws: run `meshgate-bench reliability-charts`",
                path.display()
            );
        }
    }

    #[test]
    fn a_negative_figure_is_refused_by_name() {
        let mut data = shipped();
        data.give_back[0].with_give_back_mib = [13.0, 12.0];
        let err = charts(&data).unwrap_err().to_string();
        assert!(
            err.contains("give_back[0]") && err.contains("with_give_back_mib"),
            "{err}"
        );
    }
}
