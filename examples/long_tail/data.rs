//! The synthetic data set: LVIS v1's class-frequency shape on Gaussian
//! class clusters.
//!
//! Classes: 337 rare (1-10 training samples each, uniform), 461 common (11-100,
//! log-uniform) and 405 frequent (101-`FREQUENT_MAX`, log-uniform): the group
//! sizes of LVIS v1. Frequent classes are capped so that a run fits in a few
//! minutes on two CPU cores; the imbalance (1 to 500) is still the regime where
//! cross-entropy drowns the rare classes.
//!
//! Features: each class has a centre drawn from N(0, I) in `DIM` dimensions; a
//! sample is its centre plus N(0, `NOISE`^2 I). The clusters of 1203 classes in
//! 64 dimensions overlap enough that no loss separates them: even the frequent
//! classes stay well below 100% accuracy. The test set is balanced,
//! `TEST_PER_CLASS` samples per class. Everything is drawn from libtorch's
//! generator seeded with `--seed`.
//!
//! Detection variant (`--head detection`): as many background training
//! samples as foreground ones (label `CLASSES`), drawn from one broad cloud
//! N(0, `BACKGROUND_SCALE`^2 I) that overlaps every class; the test set stays
//! the foreground one, scored on the class logits as a detector's
//! classification of foreground boxes.

use tch::{Device, Kind, Tensor};

pub const DIM: i64 = 64;
const NOISE: f64 = 1.6;
const RARE: (i64, i64) = (337, 10);
const COMMON: (i64, i64) = (461, 100);
const FREQUENT: i64 = 405;
const FREQUENT_MAX: i64 = 500;
pub const CLASSES: i64 = RARE.0 + COMMON.0 + FREQUENT;
pub const TEST_PER_CLASS: i64 = 20;
const BACKGROUND_SCALE: f64 = 2.5;

/// Features and labels of one split, on the training device.
pub struct Split {
    pub x: Tensor,
    pub y: Tensor,
}

/// The training split, the balanced test split, and each class's number of
/// training samples.
pub struct DataSet {
    pub train: Split,
    pub test: Split,
    pub train_counts: Vec<i64>,
}

/// A frequency group of LVIS v1, by training-sample count.
#[derive(Clone, Copy)]
pub enum Group {
    Rare,
    Common,
    Frequent,
    All,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Rare, Group::Common, Group::Frequent, Group::All];

    pub fn name(self) -> &'static str {
        match self {
            Group::Rare => "rare",
            Group::Common => "common",
            Group::Frequent => "frequent",
            Group::All => "all",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Group::Rare => "rare (1-10)",
            Group::Common => "common (11-100)",
            Group::Frequent => "frequent (>100)",
            Group::All => "all",
        }
    }

    pub fn contains(self, train_samples: i64) -> bool {
        match self {
            Group::Rare => train_samples <= RARE.1,
            Group::Common => train_samples > RARE.1 && train_samples <= COMMON.1,
            Group::Frequent => train_samples > COMMON.1,
            Group::All => true,
        }
    }
}

/// `count` integers log-uniform in `[low, high]`.
fn log_uniform(count: i64, low: i64, high: i64) -> Vec<i64> {
    let u = Tensor::rand([count], (Kind::Double, Device::Cpu));
    let (lo, hi) = ((low as f64).ln(), ((high + 1) as f64).ln());
    let v = (u * (hi - lo) + lo).exp().floor().clamp(low as f64, high as f64);
    Vec::<f64>::try_from(v)
        .expect("a 1-D double tensor")
        .into_iter()
        .map(|x| x as i64)
        .collect()
}

fn training_counts() -> Vec<i64> {
    let rare = Tensor::randint_low(1, RARE.1 + 1, [RARE.0], (Kind::Int64, Device::Cpu));
    let mut counts = Vec::<i64>::try_from(rare).expect("a 1-D int64 tensor");
    counts.extend(log_uniform(COMMON.0, RARE.1 + 1, COMMON.1));
    counts.extend(log_uniform(FREQUENT, COMMON.1 + 1, FREQUENT_MAX));
    counts
}

impl DataSet {
    pub fn generate(seed: i64, device: Device) -> DataSet {
        tch::manual_seed(seed);
        let train_counts = training_counts();
        let centres = Tensor::randn([CLASSES, DIM], (Kind::Float, Device::Cpu));
        let draw = |per_class: &dyn Fn(usize) -> i64| {
            let labels: Vec<i64> = (0..CLASSES as usize)
                .flat_map(|c| std::iter::repeat_n(c as i64, per_class(c) as usize))
                .collect();
            let y = Tensor::from_slice(&labels);
            let noise = Tensor::randn([labels.len() as i64, DIM], (Kind::Float, Device::Cpu)) * NOISE;
            Split {
                x: (centres.index_select(0, &y) + noise).to_device(device),
                y: y.to_device(device),
            }
        };
        let train = draw(&|c| train_counts[c]);
        let test = draw(&|_| TEST_PER_CLASS);
        DataSet {
            train,
            test,
            train_counts,
        }
    }

    /// Adds one background training sample (label `CLASSES`) per foreground
    /// one, for the detection variant.
    pub fn with_background(mut self) -> DataSet {
        let device = self.train.x.device();
        let n = self.train.y.size()[0];
        let x = Tensor::randn([n, DIM], (Kind::Float, Device::Cpu)) * BACKGROUND_SCALE;
        let y = Tensor::full([n], CLASSES, (Kind::Int64, Device::Cpu));
        self.train = Split {
            x: Tensor::cat(&[self.train.x, x.to_device(device)], 0),
            y: Tensor::cat(&[self.train.y, y.to_device(device)], 0),
        };
        self
    }

    /// Mean of `per_class` over the classes of `group`.
    pub fn group_mean(&self, per_class: &[f64], group: Group) -> f64 {
        let members: Vec<f64> = per_class
            .iter()
            .zip(&self.train_counts)
            .filter(|(_, &n)| group.contains(n))
            .map(|(a, _)| *a)
            .collect();
        members.iter().sum::<f64>() / members.len().max(1) as f64
    }
}
