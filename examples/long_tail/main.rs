//! Long-tail demo: an MLP classifier on a synthetic data set shaped like LVIS
//! v1 (1203 classes; 337 rare, 461 common, 405 frequent), trained once with
//! softmax cross-entropy and once with Seesaw loss, same seed and schedule.
//! Prints accuracy per frequency group on a balanced test set and the time
//! per training step, writes a plot of per-class accuracy against
//! training-sample count, and optionally the results as JSON.
//!
//! ```text
//! cargo run --release --example long_tail -- [--device auto|cpu|cuda] [--epochs N]
//!     [--seed S] [--hidden H] [--head classification|detection] [--classifier linear|normed]
//!     [--json PATH] [--plot PATH]
//! ```
//!
//! How the data are made: `data.rs`. The model and schedule: `train.rs`.

mod data;
mod plot;
mod train;

use anyhow::{anyhow, bail, Context, Result};
use data::{DataSet, Group, CLASSES};
use std::path::PathBuf;
use tch::Device;
use train::{Classifier, LossKind, RunResult, Schedule};

const USAGE: &str = "options: --device auto|cpu|cuda, --epochs N, --seed S, --hidden H, --head classification|detection, --classifier linear|normed, --json PATH, --plot PATH";

struct Options {
    schedule: Schedule,
    json: Option<PathBuf>,
    plot: PathBuf,
}

fn number(value: Option<String>, flag: &str) -> Result<i64> {
    value
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("{flag} takes a number ({USAGE})"))
}

fn parse_options() -> Result<Options> {
    let mut device = None;
    let mut detection = false;
    let mut classifier = Classifier::Linear;
    let (mut epochs, mut seed, mut hidden) = (20, 0, 256);
    let (mut json, mut plot) = (None::<PathBuf>, None::<PathBuf>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => {
                device = match args.next().as_deref() {
                    Some("auto") => None,
                    Some("cpu") => Some(Device::Cpu),
                    Some("cuda") if tch::Cuda::is_available() => Some(Device::Cuda(0)),
                    Some("cuda") => bail!("--device cuda: libtorch sees no CUDA device"),
                    other => bail!("--device takes auto, cpu or cuda, got {other:?}"),
                }
            }
            "--head" => {
                detection = match args.next().as_deref() {
                    Some("classification") => false,
                    Some("detection") => true,
                    other => bail!("--head takes classification or detection, got {other:?}"),
                }
            }
            "--classifier" => {
                classifier = match args.next().as_deref() {
                    Some("linear") => Classifier::Linear,
                    Some("normed") => Classifier::Normed,
                    other => bail!("--classifier takes linear or normed, got {other:?}"),
                }
            }
            "--epochs" => epochs = number(args.next(), "--epochs")?,
            "--seed" => seed = number(args.next(), "--seed")?,
            "--hidden" => hidden = number(args.next(), "--hidden")?,
            "--json" => json = Some(args.next().ok_or_else(|| anyhow!("--json takes a path"))?.into()),
            "--plot" => plot = Some(args.next().ok_or_else(|| anyhow!("--plot takes a path"))?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other} ({USAGE})"),
        }
    }
    if epochs < 1 || hidden < 1 {
        bail!("--epochs and --hidden must be at least 1");
    }
    let plot = plot.unwrap_or_else(|| match &json {
        Some(j) => j.with_extension("svg"),
        None => PathBuf::from("long_tail.svg"),
    });
    Ok(Options {
        schedule: Schedule {
            detection,
            classifier,
            epochs,
            hidden,
            seed,
            device: device.unwrap_or_else(Device::cuda_if_available),
        },
        json,
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
        .zip(["#1f77b4", "#d62728"])
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
    write_file(&options.plot, &plot::svg(&title, &data.train_counts, &series))?;
    println!("\nplot: {}", options.plot.display());
    if let Some(path) = &options.json {
        write_file(path, &json(&data, &runs))?;
        println!("json: {}", path.display());
    }
    Ok(())
}
