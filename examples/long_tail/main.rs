//! Long-tail demo: an MLP classifier on a synthetic data set shaped like LVIS
//! v1 (1203 classes; 337 rare, 461 common, 405 frequent), trained once with
//! softmax cross-entropy and once with Seesaw loss, same seed and schedule.
//! Prints accuracy per frequency group on a balanced test set and the time
//! per training step, writes a plot of per-class accuracy against
//! training-sample count, and optionally the results as JSON.
//!
//! ```text
//! cargo run --release --example long_tail -- --help
//! ```
//!
//! How the data are made: `data.rs`. The model and schedule: `train.rs`.

mod data;
mod plot;
mod train;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use data::{DataSet, Group, CLASSES};
use std::path::PathBuf;
use tch::Device;
use train::{Classifier, LossKind, RunResult, Schedule};

/// Long-tail demo: softmax cross-entropy against Seesaw loss on a synthetic
/// data set shaped like LVIS v1.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Where to train: the GPU when libtorch sees one (auto), the CPU, or the
    /// GPU (an error without one).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Training epochs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    epochs: i64,
    /// Seed of the data and of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Width of the hidden layer.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(i64).range(1..))]
    hidden: i64,
    /// classification: C outputs; detection: a background class, C + 1
    /// outputs for cross-entropy and the C + 2 head for Seesaw.
    #[arg(long, value_enum, default_value_t = HeadChoice::Classification)]
    head: HeadChoice,
    /// The models' last layer: linear, or mmdetection's cosine classifier.
    #[arg(long, value_enum, default_value_t = Classifier::Linear)]
    classifier: Classifier,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the plot [default: next to the JSON, else
    /// target/long_tail/long_tail.svg].
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum HeadChoice {
    Classification,
    Detection,
}

struct Options {
    schedule: Schedule,
    json: Option<PathBuf>,
    plot: PathBuf,
}

fn parse_options() -> Result<Options> {
    let cli = Cli::parse();
    let device = match cli.device {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Cuda => bail!("--device cuda: libtorch sees no CUDA device"),
    };
    // Generated files go where a user expects them: next to the JSON asked
    // for, else in the build output folder (ignored by git), not the
    // repository root.
    let plot = cli.plot.unwrap_or_else(|| match &cli.json {
        Some(j) => j.with_extension("svg"),
        None => PathBuf::from("target").join("long_tail").join("long_tail.svg"),
    });
    Ok(Options {
        schedule: Schedule {
            detection: matches!(cli.head, HeadChoice::Detection),
            classifier: cli.classifier,
            epochs: cli.epochs,
            hidden: cli.hidden,
            seed: cli.seed,
            device,
        },
        json: cli.json,
        plot,
    })
}

fn write_file(path: &PathBuf, contents: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn json(data: &DataSet, runs: &[(LossKind, RunResult)]) -> String {
    let entry = |r: &RunResult| {
        let groups: Vec<String> = Group::ALL
            .iter()
            .map(|&g| format!("\"{}\": {:.6}", g.name(), data.group_mean(&r.per_class, g)))
            .collect();
        format!("{{{}, \"step_ms\": {:.4}}}", groups.join(", "), r.step_ms)
    };
    let parts: Vec<String> = runs
        .iter()
        .map(|(k, r)| {
            let key = if *k == LossKind::Seesaw { "seesaw" } else { "ce" };
            format!("  \"{key}\": {}", entry(r))
        })
        .collect();
    format!("{{\n{}\n}}\n", parts.join(",\n"))
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let s = &options.schedule;
    let mut data = DataSet::generate(s.seed, s.device);
    if s.detection {
        data = data.with_background();
    }
    println!(
        "{CLASSES} classes (LVIS v1 groups), {} training samples ({} to {} per class{}), {} test samples; \
         MLP 64-{}-{CLASSES}{} ({} last layer), {} epochs, seed {}, {:?}",
        data.train_counts.iter().sum::<i64>(),
        data.train_counts.iter().min().unwrap_or(&0),
        data.train_counts.iter().max().unwrap_or(&0),
        if s.detection { ", as many background" } else { "" },
        data.test.y.size()[0],
        s.hidden,
        if s.detection { " (+1 CE / +2 Seesaw)" } else { "" },
        s.classifier.name(),
        s.epochs,
        s.seed,
        s.device
    );
    let runs = train::run_both(&data, s)?;

    println!("\n{:<18} {:>9} {:>9}", "test accuracy", "CE", "Seesaw");
    for g in Group::ALL {
        let mean = |r: &RunResult| 100.0 * data.group_mean(&r.per_class, g);
        println!(
            "{:<18} {:>8.1}% {:>8.1}%",
            g.label(),
            mean(&runs[0].1),
            mean(&runs[1].1)
        );
    }
    println!(
        "{:<18} {:>7.2}ms {:>7.2}ms",
        "time per step", runs[0].1.step_ms, runs[1].1.step_ms
    );

    let series: Vec<plot::Series> = runs
        .iter()
        .zip([
            plotters::style::RGBColor(0x1f, 0x77, 0xb4),
            plotters::style::RGBColor(0xd6, 0x27, 0x28),
        ])
        .map(|((k, r), colour)| plot::Series {
            name: k.name(),
            colour,
            per_class: &r.per_class,
        })
        .collect();
    let title = format!(
        "Per-class test accuracy, {CLASSES} LVIS-shaped classes (seed {})",
        s.seed
    );
    write_file(&options.plot, &plot::svg(&title, &data.train_counts, &series)?)?;
    println!("\nplot: {}", options.plot.display());
    if let Some(path) = &options.json {
        write_file(path, &json(&data, &runs))?;
        println!("json: {}", path.display());
    }
    Ok(())
}
