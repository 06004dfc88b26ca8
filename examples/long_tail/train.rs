//! The model and its training loop: the same MLP head, seed and schedule
//! for both losses; only the loss differs.

use crate::data::{DataSet, CLASSES, DIM, TEST_PER_CLASS};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use seesaw_loss::{SeesawConfig, SeesawLoss};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 512;
const LR: f64 = 0.2;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 1e-4;

#[derive(Clone, Copy, PartialEq)]
pub enum LossKind {
    CrossEntropy,
    Seesaw,
}

impl LossKind {
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "CE",
            LossKind::Seesaw => "Seesaw",
        }
    }
}

/// What one training run gives: per-class test accuracy (fractions, in class
/// order) and the mean wall time of a training step.
pub struct RunResult {
    pub per_class: Vec<f64>,
    pub step_ms: f64,
}

pub struct Schedule {
    pub epochs: i64,
    pub hidden: i64,
    pub seed: i64,
    pub device: Device,
}

fn model(root: &nn::Path, hidden: i64) -> impl Module {
    nn::seq()
        .add(nn::linear(root / "fc1", DIM, hidden, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(root / "fc2", hidden, CLASSES, Default::default()))
}

fn progress_bar(steps: u64, loss: LossKind) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:40}] {pos}/{len} steps  {msg}  ({elapsed}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(loss.name());
    bar
}

/// Trains a fresh model with `loss` and evaluates it on the test split.
pub fn run(data: &DataSet, loss: LossKind, schedule: &Schedule) -> Result<RunResult> {
    tch::manual_seed(schedule.seed);
    let device = schedule.device;
    let vs = nn::VarStore::new(device);
    let net = model(&(vs.root() / "net"), schedule.hidden);
    let mut seesaw = SeesawLoss::new(vs.root() / "seesaw", SeesawConfig::classification(CLASSES))?;
    let mut opt = nn::Sgd {
        momentum: MOMENTUM,
        wd: WEIGHT_DECAY,
        ..Default::default()
    }
    .build(&vs, LR)?;

    let n = data.train.y.size()[0];
    let steps_per_epoch = (n + BATCH - 1) / BATCH;
    let total_steps = steps_per_epoch * schedule.epochs;
    let bar = progress_bar(total_steps as u64, loss);
    let mut step = 0;
    let mut train_time = std::time::Duration::ZERO;
    for epoch in 0..schedule.epochs {
        let order = Tensor::randperm(n, (Kind::Int64, device));
        let start = std::time::Instant::now();
        let mut last = None;
        for b in (0..n).step_by(BATCH as usize) {
            // Cosine decay over the whole run, step by step.
            let t = step as f64 / total_steps as f64;
            opt.set_lr(LR * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
            let idx = order.narrow(0, b, BATCH.min(n - b));
            let logits = net.forward(&data.train.x.index_select(0, &idx));
            let labels = data.train.y.index_select(0, &idx);
            let value = match loss {
                LossKind::CrossEntropy => logits.cross_entropy_for_logits(&labels),
                LossKind::Seesaw => seesaw.forward(&logits, &labels, None, None)?.total(),
            };
            opt.backward_step(&value);
            last = Some(value);
            step += 1;
            bar.inc(1);
        }
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        train_time += start.elapsed();
        // Reading the last loss back is outside the timed region: it forces a sync.
        if let Some(v) = last {
            bar.set_message(format!(
                "epoch {}/{} loss {:.3}",
                epoch + 1,
                schedule.epochs,
                v.double_value(&[])
            ));
        }
    }
    bar.finish();

    let correct = tch::no_grad(|| {
        net.forward(&data.test.x)
            .argmax(1, false)
            .eq_tensor(&data.test.y)
            .to_kind(Kind::Double)
    });
    let per_class = correct.view([CLASSES, TEST_PER_CLASS]).mean_dim(1, false, Kind::Double);
    Ok(RunResult {
        per_class: Vec::<f64>::try_from(per_class.to_device(Device::Cpu))?,
        step_ms: train_time.as_secs_f64() * 1e3 / total_steps.max(1) as f64,
    })
}
