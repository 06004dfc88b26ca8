//! Long-tail demo: a linear classifier on a synthetic long-tailed data set,
//! trained once with softmax cross-entropy and once with Seesaw loss, with
//! accuracy reported per frequency group on a balanced test set.
//!
//! The data: `CLASSES` class centres drawn from N(0, 1) in `DIM` dimensions;
//! samples are centre + N(0, NOISE^2). Class `i` has
//! `HEAD * (TAIL / HEAD)^(i / (CLASSES - 1))` training samples (200 down to 2)
//! and `TEST_PER_CLASS` test samples. Seeds are fixed.
//!
//! `cargo run --release --example long_tail -- [--device cpu|cuda] [--epochs N]`

use anyhow::{bail, Result};
use seesaw_loss::{SeesawConfig, SeesawLoss};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const CLASSES: i64 = 200;
const DIM: i64 = 64;
const NOISE: f64 = 2.2;
const HEAD: f64 = 200.0;
const TAIL: f64 = 2.0;
const TEST_PER_CLASS: i64 = 40;

/// A frequency group: its name and which training-sample counts belong to it.
type Group = (&'static str, fn(i64) -> bool);

struct Split {
    x: Tensor,
    y: Tensor,
}

fn samples_of(class: i64) -> i64 {
    (HEAD * (TAIL / HEAD).powf(class as f64 / (CLASSES - 1) as f64)).round() as i64
}

fn make_data(device: Device) -> (Split, Split, Vec<i64>) {
    tch::manual_seed(7);
    let centres = Tensor::randn([CLASSES, DIM], (Kind::Float, Device::Cpu));
    let draw = |per_class: &dyn Fn(i64) -> i64| {
        let labels: Vec<i64> = (0..CLASSES)
            .flat_map(|c| std::iter::repeat(c).take(per_class(c) as usize))
            .collect();
        let y = Tensor::from_slice(&labels);
        let x =
            centres.index_select(0, &y) + Tensor::randn([labels.len() as i64, DIM], (Kind::Float, Device::Cpu)) * NOISE;
        Split {
            x: x.to_device(device),
            y: y.to_device(device),
        }
    };
    let train = draw(&samples_of);
    let test = draw(&|_| TEST_PER_CLASS);
    (train, test, (0..CLASSES).map(samples_of).collect())
}

/// Trains a fresh linear head; `seesaw` picks the loss. Returns per-class
/// test accuracy and milliseconds per step.
fn train(train: &Split, test: &Split, seesaw: bool, epochs: i64, device: Device) -> Result<(Vec<f64>, f64)> {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(device);
    let head = nn::linear(vs.root() / "head", DIM, CLASSES, Default::default());
    let mut loss = SeesawLoss::new(vs.root() / "seesaw", SeesawConfig::classification(CLASSES))?;
    let mut opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&vs, 0.05)?;
    let n = train.y.size()[0];
    let batch = 256;
    let mut steps = 0u32;
    let start = std::time::Instant::now();
    for _ in 0..epochs {
        let order = Tensor::randperm(n, (Kind::Int64, device));
        for b in (0..n).step_by(batch as usize) {
            let idx = order.narrow(0, b, batch.min(n - b));
            let logits = head.forward(&train.x.index_select(0, &idx));
            let labels = train.y.index_select(0, &idx);
            let value = if seesaw {
                loss.forward(&logits, &labels, None, None)?.total()
            } else {
                logits.cross_entropy_for_logits(&labels)
            };
            opt.backward_step(&value);
            steps += 1;
        }
    }
    let ms_per_step = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let correct = tch::no_grad(|| {
        head.forward(&test.x)
            .argmax(1, false)
            .eq_tensor(&test.y)
            .to_kind(Kind::Float)
    });
    let per_class = correct.view([CLASSES, TEST_PER_CLASS]).mean_dim(1, false, Kind::Float);
    Ok((
        Vec::<f64>::try_from(per_class.to_kind(Kind::Double).to_device(Device::Cpu))?,
        ms_per_step,
    ))
}

fn main() -> Result<()> {
    let mut device = Device::Cpu;
    let mut epochs = 30;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => {
                device = match args.next().as_deref() {
                    Some("cpu") => Device::Cpu,
                    Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
                    Some("cuda") => bail!("--device cuda: libtorch sees no CUDA device"),
                    other => bail!("--device takes cpu or cuda, got {other:?}"),
                }
            }
            "--epochs" => {
                epochs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--epochs takes a number"))?
            }
            other => bail!("unknown option {other} (options: --device cpu|cuda, --epochs N)"),
        }
    }
    let (train_set, test_set, counts) = make_data(device);
    println!(
        "{} classes, {} training samples ({} down to {} per class), {} test samples, {device:?}",
        CLASSES,
        counts.iter().sum::<i64>(),
        counts[0],
        counts[CLASSES as usize - 1],
        CLASSES * TEST_PER_CLASS
    );
    let groups: [Group; 4] = [
        ("rare (<=10)", |n| n <= 10),
        ("common (11-100)", |n| (11..=100).contains(&n)),
        ("frequent (>100)", |n| n > 100),
        ("all", |_| true),
    ];
    println!("{:<16} {:>10} {:>10}", "group", "CE", "Seesaw");
    let ce = train(&train_set, &test_set, false, epochs, device)?;
    let ss = train(&train_set, &test_set, true, epochs, device)?;
    for (name, member) in groups {
        let mean = |acc: &[f64]| {
            let v: Vec<f64> = acc
                .iter()
                .zip(&counts)
                .filter(|(_, &n)| member(n))
                .map(|(a, _)| *a)
                .collect();
            100.0 * v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        println!("{name:<16} {:>9.1}% {:>9.1}%", mean(&ce.0), mean(&ss.0));
    }
    println!("{:<16} {:>8.3}ms {:>8.3}ms", "time per step", ce.1, ss.1);
    Ok(())
}
