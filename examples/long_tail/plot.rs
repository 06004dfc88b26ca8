//! An SVG plot of per-class test accuracy against training-sample count, both
//! losses on one chart: faint points per class, bold lines through the means
//! of log-spaced bins, and the rare/common/frequent boundaries; drawn with
//! plotters' SVG backend (no system library: its built-in font metrics).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

const SIZE: (u32, u32) = (760, 440);
const BINS: usize = 14;

/// One loss's per-class accuracies (fractions) and how to draw them.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: RGBColor,
    pub per_class: &'a [f64],
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
pub fn svg(title: &str, counts: &[i64], series: &[Series]) -> Result<String> {
    let max = *counts.iter().max().unwrap_or(&10) as f64;
    let log_max = max.log10().ceil().max(1.0);
    let mut document = String::new();
    {
        let plot_error = |e: &dyn std::fmt::Display| anyhow!("drawing the plot: {e}");
        let root = SVGBackend::with_string(&mut document, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(52)
            .build_cartesian_2d((1f64..10f64.powf(log_max)).log_scale(), 0f64..1f64)
            .map_err(|e| plot_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("training samples of the class (log scale)")
            .y_desc("test accuracy of the class")
            .y_label_formatter(&|a| format!("{:.0}%", a * 100.0))
            .x_label_formatter(&|n| format!("{n:.0}"))
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .draw()
            .map_err(|e| plot_error(&e))?;
        // The group boundaries, labelled near the bottom (the legend is at
        // the top left).
        let grey = RGBColor(0x66, 0x66, 0x66);
        for (boundary, label) in [(10.5, "rare | common"), (100.5, "common | frequent")] {
            chart
                .draw_series(DashedLineSeries::new(
                    [(boundary, 0.0), (boundary, 1.0)],
                    4,
                    3,
                    RGBColor(0x88, 0x88, 0x88).into(),
                ))
                .map_err(|e| plot_error(&e))?;
            let text = ("sans-serif", 12)
                .into_font()
                .color(&grey)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series([Text::new(label, (boundary, 0.04), text)])
                .map_err(|e| plot_error(&e))?;
        }
        // Points per class, then the binned means on top.
        for s in series {
            let dots = counts
                .iter()
                .zip(s.per_class)
                .map(|(&n, &a)| Circle::new((n as f64, a), 2, s.colour.mix(0.18).filled()));
            chart.draw_series(dots).map_err(|e| plot_error(&e))?;
        }
        for s in series {
            let style = s.colour.stroke_width(3);
            chart
                .draw_series(LineSeries::new(binned(counts, s.per_class, log_max), style))
                .map_err(|e| plot_error(&e))?
                .label(format!("{} (bin means; dots: classes)", s.name))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .draw()
            .map_err(|e| plot_error(&e))?;
        root.present().map_err(|e| plot_error(&e))?;
    }
    Ok(document)
}
