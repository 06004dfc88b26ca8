//! The model and its training loop: the same MLP head, seed, batches and
//! schedule for both losses, trained in lockstep; only the loss differs.

use crate::data::{DataSet, CLASSES, DIM, TEST_PER_CLASS};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use seesaw_loss::{NormedLinear, NormedLinearConfig, SeesawConfig, SeesawLoss};
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
/// order) and the wall time of a training step (median epoch / steps).
pub struct RunResult {
    pub per_class: Vec<f64>,
    pub step_ms: f64,
}

pub struct Schedule {
    /// The detection variant: a background class, `C + 1` outputs for
    /// cross-entropy and the `C + 2` head for Seesaw.
    pub detection: bool,
    /// The last layer of both models.
    pub classifier: Classifier,
    pub epochs: i64,
    pub hidden: i64,
    pub seed: i64,
    pub device: Device,
}

/// The models' last layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Classifier {
    /// A plain linear layer.
    Linear,
    /// mmdetection's cosine classifier (`NormedLinear`, temperature 20), as
    /// its Seesaw configurations use.
    Normed,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        match self {
            Classifier::Linear => "linear",
            Classifier::Normed => "cosine",
        }
    }
}

fn model(root: &nn::Path, hidden: i64, outputs: i64, classifier: Classifier) -> Result<nn::Sequential> {
    let body = nn::seq()
        .add(nn::linear(root / "fc1", DIM, hidden, Default::default()))
        .add_fn(|x| x.relu());
    Ok(match classifier {
        Classifier::Linear => body.add(nn::linear(root / "fc2", hidden, outputs, Default::default())),
        Classifier::Normed => body.add(NormedLinear::new(
            root / "fc2",
            hidden,
            outputs,
            NormedLinearConfig::default(),
        )?),
    })
}

fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} steps  {msg}  ({elapsed}, eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// One model with its optimizer and loss, and its step times.
struct Trainee {
    kind: LossKind,
    _vs: nn::VarStore,
    net: nn::Sequential,
    opt: nn::Optimizer,
    seesaw: SeesawLoss,
    /// Wall time of this model's steps in the current epoch, and per epoch.
    epoch_time: f64,
    epoch_ms: Vec<f64>,
    last_loss: Option<Tensor>,
}

impl Trainee {
    fn new(kind: LossKind, schedule: &Schedule) -> Result<Trainee> {
        // The same seed before each model: both start from the same weights.
        tch::manual_seed(schedule.seed);
        let vs = nn::VarStore::new(schedule.device);
        let (outputs, config) = match (schedule.detection, kind) {
            (false, _) => (CLASSES, SeesawConfig::classification(CLASSES)),
            (true, LossKind::CrossEntropy) => (CLASSES + 1, SeesawConfig::detection(CLASSES)),
            (true, LossKind::Seesaw) => (CLASSES + 2, SeesawConfig::detection(CLASSES)),
        };
        let net = model(&(vs.root() / "net"), schedule.hidden, outputs, schedule.classifier)?;
        let seesaw = SeesawLoss::new(vs.root() / "seesaw", config)?;
        let opt = nn::Sgd {
            momentum: MOMENTUM,
            wd: WEIGHT_DECAY,
            ..Default::default()
        }
        .build(&vs, LR)?;
        Ok(Trainee {
            kind,
            _vs: vs,
            net,
            opt,
            seesaw,
            epoch_time: 0.0,
            epoch_ms: Vec::new(),
            last_loss: None,
        })
    }

    /// One training step on a batch, timed (on CUDA up to the end of its
    /// GPU work).
    fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64, device: Device) -> Result<()> {
        let start = std::time::Instant::now();
        self.opt.set_lr(lr);
        let logits = self.net.forward(x);
        let value = match self.kind {
            LossKind::CrossEntropy => logits.cross_entropy_for_logits(y),
            LossKind::Seesaw => self.seesaw.forward(&logits, y, None, None)?.total(),
        };
        self.opt.backward_step(&value);
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
        self.epoch_time += start.elapsed().as_secs_f64() * 1e3;
        self.last_loss = Some(value);
        Ok(())
    }

    fn end_epoch(&mut self) {
        self.epoch_ms.push(std::mem::take(&mut self.epoch_time));
    }

    fn evaluate(&self, data: &DataSet) -> Result<Vec<f64>> {
        let correct = tch::no_grad(|| {
            // The class logits only: a detector's classification of foreground boxes.
            self.net
                .forward(&data.test.x)
                .narrow(1, 0, CLASSES)
                .argmax(1, false)
                .eq_tensor(&data.test.y)
                .to_kind(Kind::Double)
        });
        let per_class = correct.view([CLASSES, TEST_PER_CLASS]).mean_dim(1, false, Kind::Double);
        Ok(Vec::<f64>::try_from(per_class.to_device(Device::Cpu))?)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Trains one model per loss in lockstep, a step of each in turn on the same
/// batch, and evaluates both on the test split. Lockstep keeps the schedule
/// identical and lets both losses see the same machine: a busy neighbour on a
/// shared machine slows both steps, not one run.
pub fn run_both(data: &DataSet, schedule: &Schedule) -> Result<[(LossKind, RunResult); 2]> {
    let device = schedule.device;
    let mut trainees = [
        Trainee::new(LossKind::CrossEntropy, schedule)?,
        Trainee::new(LossKind::Seesaw, schedule)?,
    ];
    let n = data.train.y.size()[0];
    let steps_per_epoch = (n + BATCH - 1) / BATCH;
    let total_steps = steps_per_epoch * schedule.epochs;
    let bar = progress_bar(total_steps as u64);
    let mut step = 0;
    for epoch in 0..schedule.epochs {
        let order = Tensor::randperm(n, (Kind::Int64, device));
        for b in (0..n).step_by(BATCH as usize) {
            // Cosine decay over the whole run, step by step.
            let t = step as f64 / total_steps as f64;
            let lr = LR * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
            let idx = order.narrow(0, b, BATCH.min(n - b));
            let (x, y) = (data.train.x.index_select(0, &idx), data.train.y.index_select(0, &idx));
            for trainee in &mut trainees {
                trainee.step(&x, &y, lr, device)?;
            }
            step += 1;
            bar.inc(1);
        }
        let mut message = format!("epoch {}/{}", epoch + 1, schedule.epochs);
        for trainee in &mut trainees {
            trainee.end_epoch();
            if let Some(v) = &trainee.last_loss {
                message += &format!("  {} loss {:.3}", trainee.kind.name(), v.double_value(&[]));
            }
        }
        bar.set_message(message);
    }
    bar.finish();
    let result = |t: &mut Trainee| -> Result<(LossKind, RunResult)> {
        Ok((
            t.kind,
            RunResult {
                per_class: t.evaluate(data)?,
                // The median epoch: one slow epoch does not move it.
                step_ms: median(&mut t.epoch_ms) / steps_per_epoch.max(1) as f64,
            },
        ))
    };
    let [ce, seesaw] = &mut trainees;
    Ok([result(ce)?, result(seesaw)?])
}
