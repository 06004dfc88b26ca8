//! Test helpers: an independent float64 oracle of the Python references,
//! written per element from their formulas (ratio matrix, `pow`, masks), and
//! conversions between tensors and plain vectors.
#![allow(dead_code)]

#[cfg(feature = "testing")]
pub mod budget;
#[cfg(feature = "testing")]
pub mod kernel;

use seesaw_loss::Reduction;
use tch::{Device, Kind, Tensor};

/// Hyper-parameters as the Python `seesaw_ce_loss` takes them.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub p: f64,
    pub q: f64,
    pub eps: f64,
}

pub const DEFAULTS: Hyper = Hyper {
    p: 0.8,
    q: 2.0,
    eps: 1e-2,
};

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The Seesaw weight of every class for one row (mmdetection's
/// `seesaw_weights[row]`): mitigation `(n_j / n_y)^p` where that ratio is
/// below 1, compensation `(s_j / max(s_y, eps))^q` where that ratio is above 1.
pub fn seesaw_weights(z: &[f64], y: usize, counts: &[f64], h: Hyper) -> Vec<f64> {
    let s = softmax(z);
    (0..z.len())
        .map(|j| {
            let mut w = 1.0;
            if h.p > 0.0 {
                let ratio = counts[j].max(1.0) / counts[y].max(1.0);
                if ratio < 1.0 {
                    w *= ratio.powf(h.p);
                }
            }
            if h.q > 0.0 {
                let ratio = s[j] / s[y].max(h.eps);
                if ratio > 1.0 {
                    w *= ratio.powf(h.q);
                }
            }
            w
        })
        .collect()
}

/// Cross-entropy of `z + log(weights)` off the label, with the weights held
/// fixed: the loss the gradient is taken of.
pub fn row_loss_with_weights(z: &[f64], y: usize, weights: &[f64]) -> f64 {
    let adjusted: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(j, v)| if j == y { *v } else { v + weights[j].ln() })
        .collect();
    let m = adjusted.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + adjusted.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    lse - adjusted[y]
}

/// One row of `seesaw_ce_loss`: loss and its gradient with the factors held
/// constant (`softmax(z') - onehot`).
pub fn seesaw_row(z: &[f64], y: usize, counts: &[f64], h: Hyper) -> (f64, Vec<f64>) {
    let weights = seesaw_weights(z, y, counts, h);
    let adjusted: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(j, v)| if j == y { *v } else { v + weights[j].ln() })
        .collect();
    let s = softmax(&adjusted);
    let grad = s
        .iter()
        .enumerate()
        .map(|(j, v)| v - if j == y { 1.0 } else { 0.0 })
        .collect();
    (row_loss_with_weights(z, y, &weights), grad)
}

/// Plain cross-entropy of one row and its gradient.
pub fn ce_row(z: &[f64], y: usize) -> (f64, Vec<f64>) {
    let s = softmax(z);
    let grad = s
        .iter()
        .enumerate()
        .map(|(j, v)| v - if j == y { 1.0 } else { 0.0 })
        .collect();
    (-s[y].ln(), grad)
}

/// The expected outputs of one call, from the oracle.
pub struct Expected {
    /// Reduced class loss (a scalar as a 1-vector) or one per positive row.
    pub classes: Vec<f64>,
    /// Reduced objectness loss, or one per row (detection only).
    pub objectness: Option<Vec<f64>>,
    /// Gradient of `classes.sum() + objectness.sum()` with respect to the scores.
    pub grad: Vec<Vec<f64>>,
}

/// Options of one call.
#[derive(Clone, Copy)]
pub struct CallSpec<'a> {
    pub detection: bool,
    pub num_classes: usize,
    pub hyper: Hyper,
    pub weights: Option<&'a [f64]>,
    pub reduction: Reduction,
    pub avg_factor: Option<f64>,
    pub loss_weight: f64,
}

impl<'a> CallSpec<'a> {
    pub fn new(detection: bool, num_classes: usize) -> Self {
        CallSpec {
            detection,
            num_classes,
            hyper: DEFAULTS,
            weights: None,
            reduction: Reduction::Mean,
            avg_factor: None,
            loss_weight: 1.0,
        }
    }
}

fn reduce(rows: &[f64], spec: &CallSpec) -> (Vec<f64>, f64) {
    // Returns the output and the scale d output_sum / d row.
    match spec.reduction {
        Reduction::None => (rows.iter().map(|r| r * spec.loss_weight).collect(), spec.loss_weight),
        Reduction::Sum => (vec![rows.iter().sum::<f64>() * spec.loss_weight], spec.loss_weight),
        Reduction::Mean => {
            let div = match spec.avg_factor {
                Some(a) => a + f32::EPSILON as f64,
                None => rows.len().max(1) as f64,
            };
            (
                vec![rows.iter().sum::<f64>() / div * spec.loss_weight],
                spec.loss_weight / div,
            )
        }
    }
}

/// mmdetection's `SeesawLoss.forward` (detection) or mmpretrain's
/// (classification) for one call, given the counts after this batch.
pub fn expected(scores: &[Vec<f64>], labels: &[i64], counts_after: &[f64], spec: &CallSpec) -> Expected {
    let c = spec.num_classes;
    let n = scores.len();
    let width = if spec.detection { c + 2 } else { c };
    let w = |r: usize| spec.weights.map_or(1.0, |w| w[r]);
    let mut grad = vec![vec![0.0; width]; n];

    let positive: Vec<usize> = (0..n).filter(|&r| (labels[r] as usize) < c).collect();
    let mut class_rows = Vec::new();
    let mut class_grads = Vec::new();
    for &r in &positive {
        let (loss, g) = seesaw_row(&scores[r][..c], labels[r] as usize, &counts_after[..c], spec.hyper);
        class_rows.push(loss * w(r));
        class_grads.push(g);
    }
    let (classes, class_scale) = reduce(&class_rows, spec);
    for (k, &r) in positive.iter().enumerate() {
        for j in 0..c {
            grad[r][j] += class_grads[k][j] * w(r) * class_scale;
        }
    }
    let objectness = spec.detection.then(|| {
        let mut rows = Vec::new();
        let mut grads = Vec::new();
        for r in 0..n {
            let target = usize::from(labels[r] as usize == c);
            let (loss, g) = ce_row(&scores[r][c..c + 2], target);
            rows.push(loss * w(r));
            grads.push(g);
        }
        let (out, scale) = reduce(&rows, spec);
        for r in 0..n {
            for j in 0..2 {
                grad[r][c + j] += grads[r][j] * w(r) * scale;
            }
        }
        out
    });
    Expected {
        classes,
        objectness,
        grad,
    }
}

/// Overwrites the counts variable a loss registered at the root of `vs`.
pub fn set_counts(vs: &tch::nn::VarStore, counts: &[i64]) {
    set_counts_of(vs, "cum_samples", counts);
}

/// Sets the counts variable `name` of `vs` (on any device).
pub fn set_counts_of(vs: &tch::nn::VarStore, name: &str, counts: &[i64]) {
    let mut var = vs.variables()[name].shallow_clone();
    tch::no_grad(|| var.copy_(&Tensor::from_slice(counts)));
}

/// Counts after adding `labels` to `before`.
pub fn counts_after(before: &[f64], labels: &[i64]) -> Vec<f64> {
    let mut c = before.to_vec();
    for &l in labels {
        c[l as usize] += 1.0;
    }
    c
}

pub fn to_rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
    let cols = t.size()[1] as usize;
    let flat = Vec::<f64>::try_from(t.flatten(0, -1)).unwrap();
    if cols == 0 {
        return vec![vec![]; t.size()[0] as usize];
    }
    flat.chunks(cols).map(|c| c.to_vec()).collect()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

pub fn to_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64).flatten(0, -1)).unwrap()
}

/// Largest absolute difference, with NaN only allowed where both have NaN.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                assert!(x.is_nan() && y.is_nan(), "NaN in one only: {x} vs {y}");
                0.0
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f64::max)
}

pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    let d = max_abs_diff(got, want);
    assert!(
        d <= tol,
        "{what}: max abs diff {d:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
}

/// ||a - b|| / ||b|| over the finite entries (NaN positions must agree).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = to_vec(a);
    let b = to_vec(b);
    max_abs_diff(&a, &b); // checks NaN placement
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.iter().zip(&b) {
        if x.is_finite() && y.is_finite() {
            num += (x - y) * (x - y);
            den += y * y;
        }
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Random scores `[n, width]` (float64) with a fixed seed.
pub fn random_scores(n: i64, width: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, width], (Kind::Double, Device::Cpu)) * 2.0
}

/// Random labels in `[0, high)`.
pub fn random_labels(n: i64, high: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(high, [n], (Kind::Int64, Device::Cpu))
}

/// Tolerance of ||fused - reference|| / ||reference|| by scores kind: the one
/// table the fused-path tests use.
pub fn tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::Float => 1e-5,
        Kind::Half | Kind::BFloat16 => 1e-2,
        other => panic!("no tolerance for {other:?}"),
    }
}

/// One case of the fused-versus-reference sweep.
#[derive(Clone, Copy, Debug)]
pub struct SweepCase {
    pub detection: bool,
    pub c: i64,
    pub n: i64,
    pub kind: Kind,
    pub reduction: Reduction,
    pub weighted: bool,
    pub avg_factor: Option<f64>,
    pub p: f64,
    pub q: f64,
    /// Scores are a strided view (every other column of a wider tensor).
    pub strided: bool,
    /// Scale of the logits (1e4 for extreme values).
    pub scale: f64,
    /// Put NaN in the first row.
    pub nan_row: bool,
}

impl SweepCase {
    /// The case as a name a failure reports, e.g.
    /// `det C=1205 N=512 bf16 Mean weighted avg=4 p=0.8 q=2 strided`.
    pub fn name(&self) -> String {
        let mut name = format!(
            "{} C={} N={} {:?} {:?}",
            if self.detection { "det" } else { "cls" },
            self.c,
            self.n,
            self.kind,
            self.reduction
        );
        if self.weighted {
            name.push_str(" weighted");
        }
        if let Some(avg) = self.avg_factor {
            name.push_str(&format!(" avg={avg}"));
        }
        name.push_str(&format!(" p={} q={}", self.p, self.q));
        for (on, what) in [(self.strided, " strided"), (self.nan_row, " nan-row")] {
            if on {
                name.push_str(what);
            }
        }
        if self.scale != 1.0 {
            name.push_str(&format!(" scale={}", self.scale));
        }
        name
    }

    pub fn new(detection: bool, c: i64, n: i64, kind: Kind) -> Self {
        SweepCase {
            detection,
            c,
            n,
            kind,
            reduction: Reduction::Mean,
            weighted: false,
            avg_factor: None,
            p: 0.8,
            q: 2.0,
            strided: false,
            scale: 2.0,
            nan_row: false,
        }
    }
}

/// Runs the case with backend `a.0` on device `a.1` and with `b` (the side
/// held to be right), two steps each so that counts matter, through the
/// autograd node and through `forward_backward` (a second loss in lockstep),
/// and returns (worst relative error of the outputs, of the gradients).
/// A reference side computes in float64, on the inputs rounded to the
/// case's kind: the other side is held to the exact loss, not to the
/// reference path's own f32 rounding (which at large logits is the larger).
pub fn sweep_case(
    case: SweepCase,
    a: (seesaw_loss::Backend, Device),
    b: (seesaw_loss::Backend, Device),
    seed: i64,
) -> (f64, f64) {
    use seesaw_loss::{Backend, SeesawConfig, SeesawLoss};
    let width = if case.detection { case.c + 2 } else { case.c };
    let high = if case.detection { case.c + 1 } else { case.c };
    let config = |backend| {
        let base = if case.detection {
            SeesawConfig::detection(case.c)
        } else {
            SeesawConfig::classification(case.c)
        };
        base.p(case.p).q(case.q).loss_weight(0.9).backend(backend)
    };
    let outputs = |out: &seesaw_loss::SeesawOutput| {
        let mut outs = vec![out.classes.to_kind(Kind::Double).to_device(Device::Cpu)];
        if let Some(o) = &out.objectness {
            outs.push(o.to_kind(Kind::Double).to_device(Device::Cpu));
        }
        outs
    };
    // The inputs of both steps, made once for both sides: libtorch's random
    // generator is global, and tests running on other threads draw from it.
    let inputs: Vec<(Tensor, Tensor, Tensor)> = (0..2)
        .map(|step| {
            tch::manual_seed(seed * 10 + step);
            let base = Tensor::randn(
                [case.n, if case.strided { 2 * width } else { width }],
                (Kind::Float, Device::Cpu),
            ) * case.scale;
            if case.nan_row && case.n > 0 {
                let _ = base.get(0).fill_(f64::NAN);
            }
            let labels = Tensor::randint(high, [case.n], (Kind::Int64, Device::Cpu));
            let weights = Tensor::rand([case.n], (Kind::Float, Device::Cpu)) + 0.5;
            (base, labels, weights)
        })
        .collect();
    // Per step: the node's (outputs, gradient), then forward_backward's.
    let run = |backend: Backend, dev: Device| -> Vec<[(Vec<Tensor>, Tensor); 2]> {
        let compute_kind = if backend == Backend::Reference {
            Kind::Double
        } else {
            case.kind
        };
        let vs = tch::nn::VarStore::new(dev);
        let mut loss = SeesawLoss::new(vs.root() / "node", config(backend)).unwrap();
        let mut fb_loss = SeesawLoss::new(vs.root() / "fb", config(backend)).unwrap();
        inputs
            .iter()
            .map(|(base, labels, weights)| {
                let labels = labels.to_device(dev);
                let weights = weights.to_device(dev);
                let weights = case.weighted.then_some(&weights);
                let leaf = base
                    .to_kind(case.kind)
                    .to_kind(compute_kind)
                    .to_device(dev)
                    .detach()
                    .set_requires_grad(true);
                let scores = if case.strided {
                    leaf.slice(1, 0, 2 * width, 2)
                } else {
                    leaf.shallow_clone()
                };
                let out = loss
                    .forward_with_reduction(&scores, &labels, weights, case.avg_factor, case.reduction)
                    .unwrap();
                out.total().backward();
                let grad = leaf.grad();
                let grad = if case.strided {
                    grad.slice(1, 0, 2 * width, 2)
                } else {
                    grad
                };
                let node = (outputs(&out), grad.to_kind(Kind::Double).to_device(Device::Cpu));
                let (fb_out, fb_grad) = fb_loss
                    .forward_backward_with_reduction(
                        &scores.detach(),
                        &labels,
                        weights,
                        case.avg_factor,
                        case.reduction,
                    )
                    .unwrap();
                let fb = (outputs(&fb_out), fb_grad.to_kind(Kind::Double).to_device(Device::Cpu));
                [node, fb]
            })
            .collect()
    };
    let fused = run(a.0, a.1);
    let reference = run(b.0, b.1);
    let (mut out_err, mut grad_err) = (0f64, 0f64);
    for (f_step, r_step) in fused.iter().zip(&reference) {
        for ((fo, fg), (ro, rg)) in f_step.iter().zip(r_step) {
            for (a, b) in fo.iter().zip(ro) {
                assert_eq!(a.size(), b.size(), "{case:?}: output shapes differ");
                out_err = out_err.max(rel_err(a, b));
            }
            assert_eq!(fg.size(), rg.size(), "{case:?}: gradient shapes differ");
            grad_err = grad_err.max(rel_err(fg, rg));
        }
    }
    (out_err, grad_err)
}

/// Runs every case (see [`sweep_case`]) with seeds from `first_seed`, asserts
/// each against [`tolerance`], and returns the worst (output, gradient)
/// relative errors.
pub fn assert_sweep(
    cases: &[SweepCase],
    a: (seesaw_loss::Backend, Device),
    b: (seesaw_loss::Backend, Device),
    first_seed: i64,
) -> (f64, f64) {
    let mut worst = (0f64, 0f64);
    for (i, case) in cases.iter().enumerate() {
        let seed = first_seed + i as i64;
        let (out, grad) = sweep_case(*case, a, b, seed);
        let tol = tolerance(case.kind);
        assert!(
            out <= tol && grad <= tol,
            "case {} (seed {seed}): output rel err {out:e}, gradient rel err {grad:e}, tolerance {tol:e}",
            case.name()
        );
        worst = (worst.0.max(out), worst.1.max(grad));
    }
    worst
}

/// The sweep of the fused-path issue: shapes, kinds, options. `max_elems`
/// bounds N x C to keep a case's memory and time in reach.
pub fn sweep_cases(max_elems: i64) -> Vec<SweepCase> {
    let mut cases = Vec::new();
    for &c in &[2i64, 3, 31, 80, 1000, 1205, 4096, 100_000] {
        for &n in &[0i64, 1, 7, 512, 8192] {
            if n * c > max_elems {
                continue;
            }
            for &kind in &[Kind::Float, Kind::Half, Kind::BFloat16] {
                for &detection in &[true, false] {
                    cases.push(SweepCase::new(detection, c, n, kind));
                }
            }
        }
    }
    // Options on a mid-sized shape, both heads.
    for &detection in &[true, false] {
        let base = SweepCase::new(detection, 80, 512, Kind::Float);
        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
            cases.push(SweepCase {
                reduction,
                weighted: true,
                ..base
            });
        }
        cases.push(SweepCase {
            weighted: true,
            avg_factor: Some(123.0),
            ..base
        });
        cases.push(SweepCase { p: 0.0, ..base });
        cases.push(SweepCase { q: 0.0, ..base });
        cases.push(SweepCase { p: 0.0, q: 0.0, ..base });
        cases.push(SweepCase { strided: true, ..base });
        cases.push(SweepCase {
            strided: true,
            kind: Kind::BFloat16,
            ..base
        });
        cases.push(SweepCase { scale: 1e4, ..base });
        cases.push(SweepCase {
            nan_row: true,
            reduction: Reduction::None,
            ..base
        });
    }
    cases
}

/// Configurations at the edges of what the fused paths (f32) can represent,
/// on `dev` (the CPU mirror, the emulated kernels, a GPU),
/// accepted by the configuration: both paths agree within the f32 tolerance,
/// on losses per row and gradients, and no per-row loss is negative.
pub fn the_paths_agree_at_the_edges_of_f32_on(dev: Device) {
    use seesaw_loss::{Backend, Reduction, SeesawConfig, SeesawLoss};
    use tch::{nn, Kind};
    let (c, n) = (50, 64);
    let edges = [
        (
            "eps at f32's smallest normal",
            SeesawConfig::detection(c).eps(f32::MIN_POSITIVE as f64),
        ),
        ("loss_weight 1e30", SeesawConfig::detection(c).loss_weight(1e30)),
        ("p 40 (steep mitigation)", SeesawConfig::detection(c).p(40.0)),
        ("q 40 (steep compensation)", SeesawConfig::detection(c).q(40.0)),
        ("no factors", SeesawConfig::classification(c).p(0.0).q(0.0)),
    ];
    for (name, config) in edges {
        let vs = nn::VarStore::new(dev);
        let mut fused = SeesawLoss::new(vs.root() / "f", config.clone().backend(Backend::Fused)).unwrap();
        let mut reference = SeesawLoss::new(vs.root() / "r", config.clone().backend(Backend::Reference)).unwrap();
        // Uneven counts, so the mitigation factor bites.
        let counts: Vec<i64> = (0..config.num_counters()).map(|j| 1 + (j * j * 37) % 5000).collect();
        set_counts_of(&vs, "f.cum_samples", &counts);
        set_counts_of(&vs, "r.cum_samples", &counts);
        let scores = (random_scores(n, config.cls_channels(), 91) * 3.0)
            .to_kind(Kind::Float)
            .to_device(dev);
        let labels = random_labels(n, config.num_counters(), 92).to_device(dev);
        let (a, b) = (
            scores.detach().copy().set_requires_grad(true),
            scores.detach().copy().set_requires_grad(true),
        );
        let out_a = fused
            .forward_with_reduction(&a, &labels, None, None, Reduction::None)
            .unwrap();
        let out_b = reference
            .forward_with_reduction(&b, &labels, None, None, Reduction::None)
            .unwrap();
        out_a.total().backward();
        out_b.total().backward();
        let tol = tolerance(Kind::Float);
        let e = rel_err(&out_a.classes, &out_b.classes);
        assert!(e <= tol, "{name}: class losses rel err {e:e}");
        assert!(
            to_vec(&out_a.classes).iter().all(|&v| v >= 0.0),
            "{name}: a negative class loss"
        );
        let e = rel_err(&a.grad(), &b.grad());
        assert!(e <= tol, "{name}: gradient rel err {e:e}");
    }
}
