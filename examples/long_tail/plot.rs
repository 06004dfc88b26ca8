//! An SVG plot of per-class test accuracy against training-sample count, both
//! losses on one chart: faint points per class, bold lines through the means
//! of log-spaced bins, and the rare/common/frequent boundaries. Written by
//! hand: a few dozen SVG elements do not need a plotting library.

use std::fmt::Write;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;
const BINS: usize = 14;

/// One loss's per-class accuracies (fractions) and how to draw them.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub per_class: &'a [f64],
}

struct Axes {
    log_max: f64,
}

impl Axes {
    fn x(&self, samples: f64) -> f64 {
        LEFT + samples.log10() / self.log_max * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, accuracy: f64) -> f64 {
        HEIGHT - BOTTOM - accuracy * (HEIGHT - TOP - BOTTOM)
    }
}

/// Mean accuracy and mean count of the classes in each log-spaced bin of
/// training-sample count (empty bins are skipped).
fn binned(counts: &[i64], per_class: &[f64], log_max: f64) -> Vec<(f64, f64)> {
    let mut sums = vec![(0.0, 0.0, 0usize); BINS];
    for (&n, &a) in counts.iter().zip(per_class) {
        let b = (((n as f64).log10() / log_max) * BINS as f64)
            .floor()
            .min(BINS as f64 - 1.0) as usize;
        sums[b].0 += (n as f64).log10();
        sums[b].1 += a;
        sums[b].2 += 1;
    }
    sums.into_iter()
        .filter(|s| s.2 > 0)
        .map(|(lx, a, k)| (10f64.powf(lx / k as f64), a / k as f64))
        .collect()
}

/// The whole SVG document.
pub fn svg(title: &str, counts: &[i64], series: &[Series]) -> String {
    let max = *counts.iter().max().unwrap_or(&10) as f64;
    let axes = Axes {
        log_max: max.log10().ceil().max(1.0),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        WIDTH / 2.0
    );
    // Grid and axes.
    for i in 0..=10 {
        let acc = i as f64 / 10.0;
        let y = axes.y(acc);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            acc * 100.0
        );
    }
    for decade in 0..=axes.log_max as i32 {
        let x = axes.x(10f64.powi(decade));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            10i64.pow(decade as u32)
        );
    }
    for (boundary, label) in [(10.5, "rare | common"), (100.5, "common | frequent")] {
        let x = axes.x(boundary);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#666">{label}</text>"##,
            HEIGHT - BOTTOM,
            x,
            TOP - 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">training samples of the class (log scale)</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">test accuracy of the class</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    // Data: points per class, then the binned means on top.
    for series in series {
        for (&n, &a) in counts.iter().zip(series.per_class) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.8" fill="{}" fill-opacity="0.18"/>"#,
                axes.x(n as f64),
                axes.y(a),
                series.colour
            );
        }
    }
    for (i, series) in series.iter().enumerate() {
        let points: Vec<String> = binned(counts, series.per_class, axes.log_max)
            .iter()
            .map(|&(n, a)| format!("{:.1},{:.1}", axes.x(n), axes.y(a)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
            points.join(" "),
            series.colour
        );
        let ly = TOP + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2.5"/><text x="{:.1}" y="{:.1}">{} (bin means; dots: classes)</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            series.colour,
            LEFT + 42.0,
            ly + 4.0,
            series.name
        );
    }
    s.push_str("</svg>\n");
    s
}
