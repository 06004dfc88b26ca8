//! What the CUDA path must do, written once for any device it runs on: the
//! GPU (`tests/gpu.rs`) and the host emulator on CPU tensors
//! (`tests/kernel_emulation.rs`). `dev` is the device the tensors live on.

use super::*;
use seesaw_loss::{Backend, Checks, Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// `cases` of the sweep against the reference path on the same device;
/// returns the worst (output, gradient) relative errors.
pub fn matches_the_reference(dev: Device, cases: &[SweepCase]) -> (f64, f64) {
    assert_sweep(cases, (Backend::Fused, dev), (Backend::Reference, dev), 0)
}

/// Two calls of `rows` rows: the count kernel's counts equal `bincount`'s.
pub fn counts_update_matches_the_host(dev: Device, rows: i64) {
    let labels = random_labels(rows, 81, 3);
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(80).backend(Backend::Fused)).unwrap();
    let x = Tensor::zeros([rows, 82], (Kind::Float, dev));
    loss.forward(&x, &labels.to_device(dev), None, None).unwrap();
    loss.forward(&x, &labels.to_device(dev), None, None).unwrap();
    let want = labels.bincount::<Tensor>(None, 81) * 2;
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), to_i64(&want));
}

/// `Checks::Immediate`: the call itself returns the error, before anything
/// changes.
pub fn out_of_range_labels_are_errors_not_faults(dev: Device) {
    let vs = nn::VarStore::new(dev);
    let config = SeesawConfig::detection(3)
        .backend(Backend::Fused)
        .checks(Checks::Immediate);
    let mut loss = SeesawLoss::new(vs.root(), config).unwrap();
    let x = Tensor::zeros([2, 5], (Kind::Float, dev));
    let err = loss
        .forward(&x, &Tensor::from_slice(&[0i64, 1000]).to_device(dev), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("found label 1000"), "{err}");
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
    // The device is still healthy.
    loss.forward(&x, &Tensor::from_slice(&[0i64, 3]).to_device(dev), None, None)
        .unwrap();
}

pub fn backward_reaches_the_scores(dev: Device) {
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(10).backend(Backend::Fused)).unwrap();
    let x = Tensor::randn([64, 10], (Kind::Float, dev)).set_requires_grad(true);
    let out = loss
        .forward(&x, &Tensor::randint(10, [64], (Kind::Int64, dev)), None, None)
        .unwrap();
    (out.total() * 3.0).backward();
    assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// The node with an upstream gradient of 2.5, and `forward_backward`, at
/// LVIS shape (C = 1203, N = 4096), both heads.
pub fn node_and_forward_backward_match_the_reference(dev: Device) {
    for detection in [false, true] {
        let (c, n) = (1203, 4096);
        let width = if detection { c + 2 } else { c };
        let config = |b: Backend| {
            if detection {
                SeesawConfig::detection(c).backend(b)
            } else {
                SeesawConfig::classification(c).backend(b)
            }
        };
        let vs = nn::VarStore::new(dev);
        let mut fused = SeesawLoss::new(vs.root() / "f", config(Backend::Fused)).unwrap();
        let mut fb = SeesawLoss::new(vs.root() / "fb", config(Backend::Fused)).unwrap();
        let mut reference = SeesawLoss::new(vs.root() / "r", config(Backend::Reference)).unwrap();
        let scores = random_scores(n, width, 31).to_kind(Kind::Float).to_device(dev);
        let labels = random_labels(n, if detection { c + 1 } else { c }, 32).to_device(dev);
        let (a, b) = (
            scores.detach().copy().set_requires_grad(true),
            scores.detach().copy().set_requires_grad(true),
        );
        (fused.forward(&a, &labels, None, None).unwrap().total() * 2.5).backward();
        (reference.forward(&b, &labels, None, None).unwrap().total() * 2.5).backward();
        let e = rel_err(&a.grad().to_kind(Kind::Double), &b.grad().to_kind(Kind::Double));
        assert!(e < 1e-5, "node gradient rel err {e:e} (detection {detection})");
        let (out, grad) = fb.forward_backward(&scores, &labels, None, None).unwrap();
        let e = rel_err(&(grad * 2.5).to_kind(Kind::Double), &b.grad().to_kind(Kind::Double));
        assert!(
            e < 1e-5,
            "forward_backward gradient rel err {e:e} (detection {detection})"
        );
        assert!(out.total().double_value(&[]).is_finite());
    }
}

/// The default on the kernels, `Checks::Deferred`: a bad batch (a label out
/// of range, a weight that is not finite) changes nothing (its loss is NaN,
/// its gradient zero, its labels are not counted, nothing faults) and the
/// next call, or `check()`, returns the error naming the row and the value.
pub fn a_deferred_bad_batch_changes_nothing_and_errors_later(dev: Device) {
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3)).unwrap();
    let scores = Tensor::randn([4, 5], (Kind::Float, dev)).set_requires_grad(true);
    let good = Tensor::from_slice(&[0i64, 2, 3, 1]).to_device(dev);
    let bad = Tensor::from_slice(&[0i64, 9, 3, -1]).to_device(dev);
    let out = loss
        .forward_with_reduction(&scores, &bad, None, None, Reduction::Sum)
        .unwrap();
    assert!(out.total().double_value(&[]).is_nan());
    out.total().backward();
    assert_eq!(scores.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
    // The next call reports it and changes nothing either; the one after runs.
    let err = loss.forward(&scores, &good, None, None).unwrap_err().to_string();
    assert!(
        err.contains("found label 9 at row 1") && err.contains("earlier call"),
        "{err}"
    );
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
    loss.forward(&scores, &good, None, None).unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [1, 1, 1, 1]);
    // forward_backward, a weight that is not finite, and `check`.
    let weights = Tensor::from_slice(&[1.0f32, f32::INFINITY, 1.0, 1.0]).to_device(dev);
    let (out, grad) = loss.forward_backward(&scores, &good, Some(&weights), None).unwrap();
    assert!(out.total().double_value(&[]).is_nan());
    assert_eq!(grad.abs().sum(Kind::Float).double_value(&[]), 0.0);
    let err = loss.check().unwrap_err().to_string();
    assert!(
        err.contains("label_weights must be finite, found inf at row 1"),
        "{err}"
    );
    loss.check().unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [1, 1, 1, 1]);
}

/// A call that fails after its prepare step takes its batch back out of the
/// counts, through the count kernel, which leaves a batch the prepare step
/// found bad alone (it counted nothing).
pub fn a_failed_call_takes_its_batch_back_out(dev: Device) {
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3)).unwrap();
    let scores = Tensor::randn([4, 5], (Kind::Float, dev));
    let labels = Tensor::from_slice(&[0i64, 3, 3, 2]).to_device(dev);
    loss.forward(&scores, &labels, None, None).unwrap();
    let before = to_i64(&loss.cum_samples().unwrap());
    assert_eq!(before, [1, 0, 1, 2]);
    // Forward callbacks run on the calling thread, where the fault is armed.
    seesaw_loss::testing::inject(seesaw_loss::testing::Fault::ForwardError);
    assert!(loss.forward(&scores, &labels, None, None).is_err());
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), before);
    let bad = Tensor::from_slice(&[0i64, 9, 3, 2]).to_device(dev);
    seesaw_loss::testing::inject(seesaw_loss::testing::Fault::ForwardError);
    assert!(loss.forward(&scores, &bad, None, None).is_err());
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), before);
    assert!(loss.check().unwrap_err().to_string().contains("found label 9"));
}

/// The default configuration with good labels: the mean of a detection
/// head's class part divides by positive rows counted on the device (no host
/// read brings them), and the loss and gradients equal the reference path's,
/// through the node and through `forward_backward`, over two steps.
pub fn the_default_matches_the_reference(dev: Device) {
    let (c, n) = (80, 512);
    let vs = nn::VarStore::new(dev);
    let device_checked = SeesawConfig::detection(c);
    let mut node = SeesawLoss::new(vs.root() / "node", device_checked.clone()).unwrap();
    let mut fb = SeesawLoss::new(vs.root() / "fb", device_checked).unwrap();
    let mut reference = SeesawLoss::new(
        vs.root() / "ref",
        SeesawConfig::detection(c).backend(Backend::Reference),
    )
    .unwrap();
    for step in 0..2 {
        let scores = random_scores(n, c + 2, 40 + step).to_kind(Kind::Float).to_device(dev);
        // Mostly background, as in a detector's batch.
        let labels = random_labels(n, 4 * c, 50 + step).clamp_max(c).to_device(dev);
        let (a, b) = (
            scores.detach().copy().set_requires_grad(true),
            scores.detach().copy().set_requires_grad(true),
        );
        let out_a = node.forward(&a, &labels, None, None).unwrap();
        let out_b = reference.forward(&b, &labels, None, None).unwrap();
        out_a.total().backward();
        out_b.total().backward();
        let e = rel_err(&out_a.total(), &out_b.total());
        assert!(e < 1e-5, "loss rel err {e:e} (step {step})");
        let e = rel_err(&a.grad(), &b.grad());
        assert!(e < 1e-5, "node gradient rel err {e:e} (step {step})");
        let (out, grad) = fb.forward_backward(&scores, &labels, None, None).unwrap();
        let e = rel_err(&out.total(), &out_b.total());
        assert!(e < 1e-5, "forward_backward loss rel err {e:e} (step {step})");
        let e = rel_err(&grad, &b.grad());
        assert!(e < 1e-5, "forward_backward gradient rel err {e:e} (step {step})");
    }
}

/// The same step twice gives the same bits: the kernels reduce in a fixed
/// order (block partials, then the last block by ticket) whatever order the
/// blocks run in, and count with integer atomics.
pub fn steps_are_bitwise_reproducible(dev: Device) {
    let run = || {
        let (c, n) = (80, 1000);
        let vs = nn::VarStore::new(dev);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(c)).unwrap();
        let scores = random_scores(n, c + 2, 60).to_kind(Kind::Float).to_device(dev);
        let labels = random_labels(n, 3 * c, 61).clamp_max(c).to_device(dev);
        let leaf = scores.detach().set_requires_grad(true);
        let out = loss.forward(&leaf, &labels, None, None).unwrap();
        out.total().backward();
        let (fb, grad) = loss.forward_backward(&scores, &labels, None, None).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> { to_vec(t).into_iter().map(|v| (v as f32).to_bits()).collect() };
        (
            [bits(&out.classes), bits(&out.objectness.unwrap()), bits(&leaf.grad())],
            [bits(&fb.total()), bits(&grad)],
            to_i64(&loss.cum_samples().unwrap()),
        )
    };
    let first = run();
    for _ in 0..3 {
        assert!(run() == first, "a run differs from the first");
    }
}
