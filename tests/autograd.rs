//! The fused path's autograd node: gradients for any upstream gradient,
//! accumulation, retain_graph, errors across the FFI boundary, double
//! backward, worker threads, and `forward_backward` (CPU; the CUDA node is
//! covered in tests/gpu.rs).

#![cfg(feature = "testing")]

mod common;

use common::*;
use seesaw_loss::testing::{inject, Fault};
use seesaw_loss::{Backend, Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

const C: i64 = 37;
const N: i64 = 64;

fn config(detection: bool, backend: Backend) -> SeesawConfig {
    let c = if detection {
        SeesawConfig::detection(C)
    } else {
        SeesawConfig::classification(C)
    };
    c.backend(backend)
}

/// A fused loss and a reference loss with identical counts.
fn pair(detection: bool, reduction: Reduction) -> (nn::VarStore, SeesawLoss, SeesawLoss) {
    let vs = nn::VarStore::new(Device::Cpu);
    let fused = SeesawLoss::new(
        vs.root() / "fused",
        config(detection, Backend::Fused).reduction(reduction),
    )
    .unwrap();
    let reference = SeesawLoss::new(
        vs.root() / "reference",
        config(detection, Backend::Reference).reduction(reduction),
    )
    .unwrap();
    (vs, fused, reference)
}

fn inputs(detection: bool, seed: i64) -> (Tensor, Tensor, Tensor) {
    let width = if detection { C + 2 } else { C };
    let scores = random_scores(N, width, seed).to_kind(Kind::Float);
    let labels = random_labels(N, if detection { C + 1 } else { C }, seed + 1);
    let weights = Tensor::rand([N], (Kind::Float, Device::Cpu)) + 0.5;
    (scores, labels, weights)
}

fn leaf(t: &Tensor) -> Tensor {
    t.detach().copy().set_requires_grad(true)
}

fn grad_of(x: &Tensor) -> Tensor {
    x.grad().to_kind(Kind::Double)
}

/// `build` turns a loss output into the scalar that is differentiated.
fn assert_same_gradient(
    detection: bool,
    reduction: Reduction,
    build: impl Fn(&seesaw_loss::SeesawOutput, &Tensor) -> Tensor,
) {
    let (_vs, mut fused, mut reference) = pair(detection, reduction);
    let (scores, labels, weights) = inputs(detection, 3);
    let (a, b) = (leaf(&scores), leaf(&scores));
    let out_a = fused.forward(&a, &labels, Some(&weights), None).unwrap();
    let out_b = reference.forward(&b, &labels, Some(&weights), None).unwrap();
    build(&out_a, &a).backward();
    build(&out_b, &b).backward();
    let err = rel_err(&grad_of(&a), &grad_of(&b));
    assert!(
        err < 1e-5,
        "{reduction:?}, detection {detection}: gradient rel err {err:e}"
    );
}

#[test]
fn scaled_loss_plus_another_loss_gives_the_reference_gradient() {
    for detection in [false, true] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            assert_same_gradient(detection, reduction, |out, x| {
                out.total() * 3.5 + (x * x).sum(Kind::Float) * 0.25
            });
        }
    }
}

#[test]
fn reduction_none_takes_an_arbitrary_upstream_vector_per_part() {
    for detection in [false, true] {
        assert_same_gradient(detection, Reduction::None, |out, _| {
            let n_cls = out.classes.size()[0];
            let v = Tensor::linspace(-2.0, 3.0, n_cls, (Kind::Float, Device::Cpu));
            let mut total = (&out.classes * v).sum(Kind::Float);
            if let Some(obj) = &out.objectness {
                let u = Tensor::linspace(1.0, -1.5, obj.size()[0], (Kind::Float, Device::Cpu));
                total += (obj * u).sum(Kind::Float);
            }
            total
        });
    }
}

#[test]
fn only_one_part_reaching_the_loss_is_handled() {
    assert_same_gradient(true, Reduction::Mean, |out, _| out.objectness.as_ref().unwrap() * 2.0);
    assert_same_gradient(true, Reduction::Mean, |out, _| &out.classes * -1.0);
}

#[test]
fn gradients_accumulate_into_grad_over_two_steps() {
    let (_vs, mut fused, mut reference) = pair(true, Reduction::Mean);
    let (scores, labels, weights) = inputs(true, 5);
    let (a, b) = (leaf(&scores), leaf(&scores));
    for _ in 0..2 {
        fused
            .forward(&a, &labels, Some(&weights), None)
            .unwrap()
            .total()
            .backward();
        reference
            .forward(&b, &labels, Some(&weights), None)
            .unwrap()
            .total()
            .backward();
    }
    let err = rel_err(&grad_of(&a), &grad_of(&b));
    assert!(err < 1e-5, "accumulated gradient rel err {err:e}");
}

#[test]
fn retain_graph_allows_a_second_backward_and_without_it_libtorch_refuses() {
    let (_vs, mut fused, _) = pair(false, Reduction::Mean);
    let (scores, labels, _) = inputs(false, 7);
    let x = leaf(&scores);
    let total = fused.forward(&x, &labels, None, None).unwrap().total();
    Tensor::f_run_backward(&[&total], &[&x], true, false).unwrap();
    let first = Tensor::f_run_backward(&[&total], &[&x], true, false).unwrap().remove(0);
    let second = Tensor::f_run_backward(&[&total], &[&x], false, false)
        .unwrap()
        .remove(0);
    assert!(rel_err(&first.to_kind(Kind::Double), &second.to_kind(Kind::Double)) == 0.0);
    let err = Tensor::f_run_backward(&[&total], &[&x], false, false).unwrap_err();
    assert!(
        err.to_string().contains("backward through the graph a second time"),
        "{err}"
    );
}

#[test]
fn double_backward_is_a_clear_error() {
    let (_vs, mut fused, _) = pair(true, Reduction::Sum);
    let (scores, labels, _) = inputs(true, 9);
    let x = leaf(&scores);
    let total = fused.forward(&x, &labels, None, None).unwrap().total();
    let err = Tensor::f_run_backward(&[&total], &[&x], true, true).unwrap_err();
    assert!(err.to_string().contains("no double backward"), "{err}");
}

#[test]
fn errors_and_panics_in_the_rust_callbacks_surface_as_errors() {
    let (_vs, mut fused, _) = pair(true, Reduction::Mean);
    let (scores, labels, _) = inputs(true, 11);
    let x = leaf(&scores);

    // Forward: the call fails and the counts are as they were.
    let before = to_i64(&fused.cum_samples().unwrap());
    inject(Fault::ForwardError);
    let err = fused.forward(&x, &labels, None, None).unwrap_err();
    assert!(err.to_string().contains("injected ForwardError"), "{err}");
    assert_eq!(to_i64(&fused.cum_samples().unwrap()), before);

    // Backward: an error, then a panic, each an Err of backward.
    for (fault, needle) in [
        (Fault::BackwardError, "injected BackwardError"),
        (Fault::BackwardPanic, "panic in the Seesaw fused loss: injected panic"),
    ] {
        let total = fused.forward(&x, &labels, None, None).unwrap().total();
        inject(fault);
        let err = total.f_backward().unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    // And the node still works afterwards.
    fused.forward(&x, &labels, None, None).unwrap().total().backward();
    assert!(x.grad().isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn backward_runs_on_another_thread() {
    let (_vs, mut fused, mut reference) = pair(false, Reduction::Mean);
    let (scores, labels, _) = inputs(false, 13);
    let (a, b) = (leaf(&scores), leaf(&scores));
    let total = fused.forward(&a, &labels, None, None).unwrap().total();
    std::thread::spawn(move || total.backward()).join().unwrap();
    reference.forward(&b, &labels, None, None).unwrap().total().backward();
    assert!(rel_err(&grad_of(&a), &grad_of(&b)) < 1e-5);
}

#[test]
fn forward_backward_matches_autograd_on_both_backends() {
    for detection in [false, true] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            for avg_factor in [None, Some(17.0)] {
                if avg_factor.is_some() && reduction != Reduction::Mean {
                    continue;
                }
                let (_vs, mut fused, mut reference) = pair(detection, reduction);
                let (scores, labels, weights) = inputs(detection, 17);
                let x = leaf(&scores);
                let out = reference.forward(&x, &labels, Some(&weights), avg_factor).unwrap();
                out.total().backward();
                for loss in [&mut fused, &mut reference] {
                    let backend = loss.config().backend;
                    let (got, grad) = loss
                        .forward_backward(&scores, &labels, Some(&weights), avg_factor)
                        .unwrap();
                    let what = format!("{backend:?} {reduction:?} det {detection} avg {avg_factor:?}");
                    assert!(!got.total().requires_grad(), "{what}: outputs carry a graph");
                    // The reference counted the batch once more than `fused`
                    // on its second call, so compare the first call's values
                    // only for the fused loss, whose counts match `out`'s.
                    if backend == Backend::Fused {
                        let e = rel_err(&got.total().to_kind(Kind::Double), &out.total().to_kind(Kind::Double));
                        assert!(e < 1e-5, "{what}: loss rel err {e:e}");
                        let e = rel_err(&grad.to_kind(Kind::Double), &grad_of(&x));
                        assert!(e < 1e-5, "{what}: gradient rel err {e:e}");
                    }
                    assert_eq!(grad.size(), scores.size(), "{what}");
                }
            }
        }
    }
}

#[test]
fn forward_backward_on_the_reference_path_matches_its_autograd() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = config(true, Backend::Reference);
    let mut a = SeesawLoss::new(vs.root() / "a", cfg.clone()).unwrap();
    let mut b = SeesawLoss::new(vs.root() / "b", cfg).unwrap();
    let (scores, labels, _) = inputs(true, 19);
    let scores = scores.to_kind(Kind::Double);
    let x = leaf(&scores);
    b.forward(&x, &labels, None, None).unwrap().total().backward();
    let (_, grad) = a.forward_backward(&scores, &labels, None, None).unwrap();
    assert!(rel_err(&grad, &grad_of(&x)) < 1e-12);
    assert_eq!(grad.kind(), Kind::Double);
}

#[test]
fn avg_factor_of_any_value_reaches_the_node_as_given() {
    // The node carries avg_factor with its own presence flag: no value of it
    // (negative included) is mistaken for "none".
    for avg in [17.0, -4.0] {
        let (_vs, mut fused, mut reference) = pair(true, Reduction::Mean);
        let (scores, labels, weights) = inputs(true, 23);
        let (a, b) = (leaf(&scores), leaf(&scores));
        let out_a = fused.forward(&a, &labels, Some(&weights), Some(avg)).unwrap().total();
        let out_b = reference
            .forward(&b, &labels, Some(&weights), Some(avg))
            .unwrap()
            .total();
        let e = rel_err(&out_a.to_kind(Kind::Double), &out_b.to_kind(Kind::Double));
        assert!(e < 1e-5, "avg_factor {avg}: loss rel err {e:e}");
        out_a.backward();
        out_b.backward();
        let e = rel_err(&grad_of(&a), &grad_of(&b));
        assert!(e < 1e-5, "avg_factor {avg}: gradient rel err {e:e}");
    }
}
