//! Horizontal bar charts as standalone SVG text, for BENCHMARKS.md: one bar
//! per target (the median) with a whisker from min to max. No I/O here.

use std::fmt::Write as _;

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Row label (the target).
    pub label: String,
    /// Length of the bar.
    pub median: f64,
    /// Whisker start.
    pub min: f64,
    /// Whisker end.
    pub max: f64,
    /// Drawn in the accent colour (meshgate's rows).
    pub highlight: bool,
}

const WIDTH: f64 = 720.0;
const LABEL_W: f64 = 170.0;
const VALUE_W: f64 = 90.0;
const ROW_H: f64 = 24.0;
const TOP: f64 = 44.0;

/// Width of a label column character, roughly, at font size 12.
const CHAR_W: f64 = 6.5;

/// The chart: `title` on top, `note` under it, one row per bar. The label
/// column is 170 px, wider (and the chart with it) when a label needs it.
pub fn bar_chart(title: &str, note: &str, bars: &[Bar]) -> String {
    let longest = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_w = LABEL_W.max(CHAR_W * longest as f64 + 14.0).ceil();
    let width = WIDTH - LABEL_W + label_w;
    let height = TOP + ROW_H * bars.len() as f64 + 12.0;
    let plot_w = WIDTH - LABEL_W - VALUE_W;
    let top_value = bars
        .iter()
        .map(|b| b.max.max(b.median))
        .fold(0.0_f64, f64::max);
    let scale = if top_value > 0.0 {
        plot_w / top_value
    } else {
        0.0
    };
    let x = |v: f64| label_w + (v.max(0.0) * scale);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="8" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="8" y="34" fill="#555555">{}</text>"##,
        escape(note)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let fill = if b.highlight { "#2a7ab0" } else { "#9aa5ad" };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 6.0,
            y + 15.0,
            escape(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
            y + 4.0,
            x(b.median) - label_w,
            ROW_H - 8.0
        );
        if b.max > b.min {
            let mid = y + ROW_H / 2.0;
            let _ = writeln!(
                s,
                r##"<path d="M{:.1} {mid:.1}H{:.1}M{:.1} {:.1}V{:.1}M{:.1} {:.1}V{:.1}" stroke="#222222" fill="none"/>"##,
                x(b.min),
                x(b.max),
                x(b.min),
                mid - 5.0,
                mid + 5.0,
                x(b.max),
                mid - 5.0,
                mid + 5.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x(b.max.max(b.median)) + 6.0,
            y + 15.0,
            number(b.median)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A value with as many decimals as its size deserves.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_text_is_escaped() {
        let bars = [
            Bar {
                label: "a<b".into(),
                median: 10.0,
                min: 9.0,
                max: 20.0,
                highlight: true,
            },
            Bar {
                label: "c".into(),
                median: 5.0,
                min: 5.0,
                max: 5.0,
                highlight: false,
            },
        ];
        let svg = bar_chart("t & u", "n", &bars);
        assert!(svg.contains("a&lt;b") && svg.contains("t &amp; u"));
        // The whisker of the first bar reaches the end of the plot area.
        let end = LABEL_W + (WIDTH - LABEL_W - VALUE_W);
        assert!(svg.contains(&format!("H{end:.1}")), "{svg}");
        assert_eq!(svg.matches("<path").count(), 1, "no whisker without spread");
        assert_eq!(number(0.1234), "0.123");
        assert!(
            svg.contains(r#"width="720""#),
            "short labels keep the width"
        );
        let wide = [Bar {
            label: "x".repeat(40),
            ..bars[1].clone()
        }];
        let svg = bar_chart("t", "n", &wide);
        let label_w = (CHAR_W * 40.0 + 14.0).ceil();
        assert!(
            svg.contains(&format!(r#"<rect x="{label_w:.1}""#))
                && svg.contains(&format!(r#"width="{}""#, WIDTH - LABEL_W + label_w)),
            "a long label widens the label column and the chart: {svg}"
        );
        assert_eq!(number(1234.4), "1234");
    }
}
