//! The loss's semantics (the README's "The two heads", and mmdetection's and
//! mmpretrain's `SeesawLoss`) against hand-worked values and
//! the float64 oracle in `common`, on the reference path and the CPU mirror.

mod common;

use common::*;
use seesaw_loss::{Backend, Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

const BACKENDS: [Backend; 2] = [Backend::Reference, Backend::Fused];

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// Builds a loss whose counts start at `counts`.
fn loss_with_counts(vs: &nn::VarStore, config: SeesawConfig, counts: &[i64]) -> SeesawLoss {
    let loss = SeesawLoss::new(vs.root(), config).unwrap();
    set_counts(vs, counts);
    loss
}

#[test]
fn hand_worked_mitigation_uses_count_ratio_to_the_power_p() {
    // Counts after the batch: n = [0 -> 1 (clamped), 4]. The row's class is 1,
    // class 0 is rarer: M_0 = (1/4)^0.8. Uniform logits give C = 1.
    // loss = ln(e^0 * 4^-0.8 + e^0) - 0 = ln(1 + 4^-0.8).
    for backend in BACKENDS {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = loss_with_counts(&vs, SeesawConfig::classification(2).backend(backend), &[0, 3]);
        let out = loss
            .forward(
                &Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
                &Tensor::from_slice(&[1i64]),
                None,
                None,
            )
            .unwrap();
        let want = (1.0 + 4f64.powf(-0.8)).ln();
        assert!(
            (scalar(&out.classes) - want).abs() < 1e-6,
            "{backend:?}: {} vs {want}",
            scalar(&out.classes)
        );
    }
}

#[test]
fn hand_worked_compensation_uses_score_ratio_to_the_power_q() {
    // Equal counts (M = 1). Scores s = [0.75, 0.25], label 1: s_0 / s_1 = 3 > 1,
    // so C_0 = 3^2 = 9 and z'_0 = ln 3 + ln 9 = ln 27; loss = ln(27 + 1) - 0.
    for backend in BACKENDS {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = loss_with_counts(&vs, SeesawConfig::classification(2).backend(backend), &[1, 0]);
        let scores = Tensor::from_slice(&[3f32.ln(), 0.0]).view([1, 2]);
        let out = loss.forward(&scores, &Tensor::from_slice(&[1i64]), None, None).unwrap();
        assert!((scalar(&out.classes) - 28f64.ln()).abs() < 1e-5, "{backend:?}");
    }
}

#[test]
fn hand_worked_detection_row_splits_classes_and_objectness() {
    // C = 2: row 0 is class 0 with logits [0, 0 | 0, 0]: counts after are
    // [1, 0, 1] so n = [1, 1]: plain CE = ln 2. Objectness target 0: ln 2.
    // Row 1 is background: no class loss; objectness ln(1 + e^-2)... with
    // logits [.., 0, 2] and target 1: ln(e^0 + e^2) - 2.
    for backend in BACKENDS {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(2).backend(backend)).unwrap();
        let scores = Tensor::from_slice(&[0f32, 0., 0., 0., 5., -5., 0., 2.]).view([2, 4]);
        let out = loss
            .forward_with_reduction(&scores, &Tensor::from_slice(&[0i64, 2]), None, None, Reduction::None)
            .unwrap();
        assert_close(&to_vec(&out.classes), &[2f64.ln()], 1e-6, "classes");
        let obj1 = (1f64 + 2f64.exp()).ln() - 2.0;
        assert_close(
            &to_vec(out.objectness.as_ref().unwrap()),
            &[2f64.ln(), obj1],
            1e-6,
            "objectness",
        );
        assert_eq!(to_i64(&loss.cum_samples().unwrap()), [1, 0, 1]);
    }
}

/// Runs `steps` calls with fresh random data and checks every output and the
/// gradient against the oracle.
fn check_against_oracle(detection: bool, c: usize, spec_of: impl Fn(&mut CallSpec, i64), backend: Backend, steps: i64) {
    let n = 24i64;
    let width = if detection { c + 2 } else { c } as i64;
    let high = if detection { c as i64 + 1 } else { c as i64 };
    let mut spec = CallSpec::new(detection, c);
    let base = if detection {
        SeesawConfig::detection(c as i64)
    } else {
        SeesawConfig::classification(c as i64)
    };
    spec_of(&mut spec, 0);
    let config = base
        .p(spec.hyper.p)
        .q(spec.hyper.q)
        .eps(spec.hyper.eps)
        .loss_weight(spec.loss_weight)
        .backend(backend);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), config).unwrap();
    let mut counts = vec![0.0; if detection { c + 1 } else { c }];
    for step in 0..steps {
        let mut spec = CallSpec::new(detection, c);
        spec_of(&mut spec, step);
        // Skewed labels so counts differ a lot between classes.
        let labels = (random_labels(n, high, 100 + step)
            .to_kind(Kind::Double)
            .pow_tensor_scalar(2.0)
            / high as f64)
            .floor()
            .to_kind(Kind::Int64)
            .clamp_max(high - 1);
        let labels_v = to_i64(&labels);
        let scores64 = random_scores(n, width, 200 + step);
        let scores = scores64.to_kind(Kind::Float).set_requires_grad(true);
        let weights_v: Vec<f64> = (0..n).map(|i| 0.25 + (i % 5) as f64 * 0.3).collect();
        let weights_t = Tensor::from_slice(&weights_v).to_kind(Kind::Float);
        if spec.weights.is_some() {
            spec.weights = Some(&weights_v);
        }
        counts = counts_after(&counts, &labels_v);
        // The oracle sees the f32-rounded scores the crate sees.
        let want = expected(&to_rows(&scores), &labels_v, &counts, &spec);
        let out = loss
            .forward_with_reduction(
                &scores,
                &labels,
                spec.weights.map(|_| &weights_t),
                spec.avg_factor,
                spec.reduction,
            )
            .unwrap();
        let what = format!(
            "{backend:?} detection={detection} C={c} step={step} {:?}",
            spec.reduction
        );
        assert_close(&to_vec(&out.classes), &want.classes, 1e-4, &format!("{what} classes"));
        match (&out.objectness, &want.objectness) {
            (Some(got), Some(w)) => assert_close(&to_vec(got), w, 1e-4, &format!("{what} objectness")),
            (None, None) => {}
            _ => panic!("{what}: objectness presence differs"),
        }
        out.total().backward();
        let grad = to_rows(&scores.grad());
        for (r, (g, w)) in grad.iter().zip(&want.grad).enumerate() {
            assert_close(g, w, 1e-5, &format!("{what} grad row {r}"));
        }
        assert_eq!(to_vec(&loss.cum_samples().unwrap()), counts, "{what}: counts");
    }
}

#[test]
fn both_heads_match_the_oracle_over_several_steps_with_defaults() {
    for backend in BACKENDS {
        check_against_oracle(true, 7, |_, _| {}, backend, 4);
        check_against_oracle(false, 7, |_, _| {}, backend, 4);
    }
}

#[test]
fn every_reduction_weights_avg_factor_and_loss_weight_match_the_oracle() {
    for backend in BACKENDS {
        for detection in [true, false] {
            for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                for (weighted, avg) in [(false, None), (true, None), (true, Some(7.5))] {
                    if reduction == Reduction::Sum && avg.is_some() {
                        continue;
                    }
                    check_against_oracle(
                        detection,
                        5,
                        |s, _| {
                            s.reduction = reduction;
                            s.avg_factor = avg;
                            s.loss_weight = 0.7;
                            if weighted {
                                s.weights = Some(&[]);
                            }
                        },
                        backend,
                        2,
                    );
                }
            }
        }
    }
}

#[test]
fn p_zero_and_q_zero_switch_the_factors_off() {
    for backend in BACKENDS {
        for (p, q) in [(0.0, 2.0), (0.8, 0.0), (0.0, 0.0), (1.5, 3.0)] {
            check_against_oracle(true, 6, |s, _| s.hyper = Hyper { p, q, eps: 0.05 }, backend, 3);
        }
    }
    // With both off the class loss is plain cross-entropy.
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(5).p(0.0).q(0.0)).unwrap();
    let scores = random_scores(9, 5, 3).to_kind(Kind::Float);
    let labels = random_labels(9, 5, 4);
    let out = loss.forward(&scores, &labels, None, None).unwrap();
    let ce = scores.cross_entropy_for_logits(&labels);
    assert!((scalar(&out.classes) - scalar(&ce)).abs() < 1e-6);
}

#[test]
fn counts_include_the_current_batch() {
    // First call ever: labels [0, 0, 0, 1]. With the batch counted, class 1
    // is rarer than class 0 (1 vs 3) and rows of class 0 get M_1 = (1/3)^p;
    // without it every count is 0 and no row would be mitigated.
    let scores = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    let labels = [0i64, 0, 0, 1];
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(2).q(0.0)).unwrap();
    let out = loss.forward(&scores, &Tensor::from_slice(&labels), None, None).unwrap();
    let rows = vec![vec![0.0, 0.0]; 4];
    let spec = CallSpec {
        hyper: Hyper { q: 0.0, ..DEFAULTS },
        ..CallSpec::new(false, 2)
    };
    let with_batch = expected(&rows, &labels, &[3.0, 1.0], &spec).classes[0];
    let without = expected(&rows, &labels, &[0.0, 0.0], &spec).classes[0];
    assert!((with_batch - without).abs() > 0.05);
    assert!((scalar(&out.classes) - with_batch).abs() < 1e-6);
}

#[test]
fn gradient_matches_float64_finite_differences() {
    // q = 0: the factors do not depend on the scores, so the gradient of the
    // loss is the full derivative and central differences must agree with it.
    let (n, c) = (6i64, 4i64);
    let scores = random_scores(n, c + 2, 11);
    let labels = Tensor::from_slice(&[0i64, 4, 2, 3, 4, 1]);
    let weights = Tensor::from_slice(&[1.0f64, 0.5, 2.0, 1.0, 0.3, 1.2]);
    let make = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let loss = loss_with_counts(
            &vs,
            SeesawConfig::detection(c).q(0.0).backend(Backend::Reference),
            &[50, 3, 9, 1, 200],
        );
        (vs, loss)
    };
    let eval = |x: &Tensor| -> f64 {
        let (_vs, mut loss) = make();
        scalar(&loss.forward(x, &labels, Some(&weights), None).unwrap().total())
    };
    let x = scores.copy().set_requires_grad(true);
    let (_vs, mut loss) = make();
    loss.forward(&x, &labels, Some(&weights), None)
        .unwrap()
        .total()
        .backward();
    let grad = to_rows(&x.grad());
    let base = to_rows(&scores);
    let h = 1e-6;
    for r in 0..n as usize {
        for j in 0..(c + 2) as usize {
            let mut plus = base.clone();
            plus[r][j] += h;
            let mut minus = base.clone();
            minus[r][j] -= h;
            let to_t = |rows: &Vec<Vec<f64>>| Tensor::from_slice(&rows.concat()).view([n, c + 2]);
            let fd = (eval(&to_t(&plus)) - eval(&to_t(&minus))) / (2.0 * h);
            assert!(
                (fd - grad[r][j]).abs() < 1e-7,
                "row {r} col {j}: fd {fd} vs grad {}",
                grad[r][j]
            );
        }
    }
}

#[test]
fn oracle_gradient_matches_finite_differences_with_factors_held() {
    // Validates the oracle itself with q > 0: differentiate the adjusted
    // cross-entropy with the Seesaw weights held fixed.
    let z = [0.3, -1.2, 2.0, 0.7, -0.4];
    let counts = [5.0, 100.0, 1.0, 30.0, 7.0];
    for y in 0..5 {
        let w = seesaw_weights(&z, y, &counts, DEFAULTS);
        let (_, grad) = seesaw_row(&z, y, &counts, DEFAULTS);
        for j in 0..5 {
            let h = 1e-6;
            let (mut a, mut b) = (z, z);
            a[j] += h;
            b[j] -= h;
            let fd = (row_loss_with_weights(&a, y, &w) - row_loss_with_weights(&b, y, &w)) / (2.0 * h);
            assert!((fd - grad[j]).abs() < 1e-8);
        }
    }
}

#[test]
fn factors_are_detached_so_the_gradient_is_not_the_full_derivative() {
    // With q > 0 the compensation factor depends on the scores; held constant,
    // the gradient is softmax(z') - onehot, which differs from differencing
    // the loss through the factor.
    let z = [2.5f64, 0.0, 1.0];
    let counts = [1i64, 1, 1];
    for backend in BACKENDS {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = loss_with_counts(&vs, SeesawConfig::classification(3).backend(backend), &[0, 0, 0]);
        let x = Tensor::from_slice(&z).view([1, 3]).set_requires_grad(true);
        let x32 = x.to_kind(Kind::Float);
        loss.forward(&x32, &Tensor::from_slice(&[1i64]), None, None)
            .unwrap()
            .total()
            .backward();
        let grad = to_vec(&x.grad());
        let (_, held) = seesaw_row(&z, 1, &[1.0, 1.0, 1.0], DEFAULTS);
        assert_close(&grad, &held, 1e-6, "gradient with factors held");
        let full = |zz: [f64; 3]| seesaw_row(&zz, 1, &[1.0, 1.0, 1.0], DEFAULTS).0;
        let h = 1e-6;
        let fd0 = (full([z[0] + h, z[1], z[2]]) - full([z[0] - h, z[1], z[2]])) / (2.0 * h);
        assert!(
            (fd0 - grad[0]).abs() > 0.1,
            "the factor's own derivative must not flow: {fd0} vs {}",
            grad[0]
        );
        let _ = counts;
    }
}

#[test]
fn no_positive_rows_give_zero_class_loss_and_zero_gradient() {
    for backend in BACKENDS {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3).backend(backend)).unwrap();
            let x = random_scores(5, 5, 1).to_kind(Kind::Float).set_requires_grad(true);
            let labels = Tensor::full([5], 3, (Kind::Int64, Device::Cpu));
            let out = loss.forward_with_reduction(&x, &labels, None, None, reduction).unwrap();
            if reduction == Reduction::None {
                assert_eq!(out.classes.size(), [0]);
            } else {
                assert_eq!(scalar(&out.classes), 0.0);
            }
            out.classes.sum(Kind::Float).backward();
            assert_eq!(
                scalar(&x.grad().abs().sum(Kind::Float)),
                0.0,
                "{backend:?} {reduction:?}"
            );
        }
    }
}

#[test]
fn reduction_none_returns_one_class_loss_per_positive_row_in_row_order() {
    let labels = [3i64, 0, 3, 2, 1, 3];
    let scores = random_scores(6, 5, 9).to_kind(Kind::Float);
    let counts = counts_after(&[0.0; 4], &labels);
    let spec = CallSpec {
        reduction: Reduction::None,
        ..CallSpec::new(true, 3)
    };
    let want = expected(&to_rows(&scores), &labels, &counts, &spec);
    assert_eq!(want.classes.len(), 3);
    for backend in BACKENDS {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(
            vs.root(),
            SeesawConfig::detection(3).reduction(Reduction::None).backend(backend),
        )
        .unwrap();
        let out = loss.forward(&scores, &Tensor::from_slice(&labels), None, None).unwrap();
        assert_close(&to_vec(&out.classes), &want.classes, 1e-5, "per positive row");
        assert_eq!(out.objectness.unwrap().size(), [6]);
    }
}

#[test]
fn empty_batch_gives_zero_losses_and_leaves_counts() {
    for backend in BACKENDS {
        for config in [SeesawConfig::detection(4), SeesawConfig::classification(4)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut loss = SeesawLoss::new(vs.root(), config.clone().backend(backend)).unwrap();
            let x = Tensor::zeros([0, config.cls_channels()], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let labels = Tensor::zeros([0], (Kind::Int64, Device::Cpu));
            for reduction in [Reduction::Mean, Reduction::Sum] {
                let out = loss.forward_with_reduction(&x, &labels, None, None, reduction).unwrap();
                assert_eq!(scalar(&out.total()), 0.0);
                out.total().backward();
            }
            let out = loss
                .forward_with_reduction(&x, &labels, None, None, Reduction::None)
                .unwrap();
            assert_eq!(out.classes.size(), [0]);
            assert_eq!(scalar(&loss.cum_samples().unwrap().sum(Kind::Int64)), 0.0);
        }
    }
}

#[test]
fn loss_comes_back_in_f32_for_half_kinds_and_f64_for_f64() {
    for (kind, want) in [
        (Kind::Float, Kind::Float),
        (Kind::Half, Kind::Float),
        (Kind::BFloat16, Kind::Float),
        (Kind::Double, Kind::Double),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3)).unwrap();
        let out = loss
            .forward(
                &Tensor::zeros([2, 5], (kind, Device::Cpu)),
                &Tensor::from_slice(&[0i64, 3]),
                None,
                None,
            )
            .unwrap();
        assert_eq!(out.classes.kind(), want);
        assert_eq!(out.objectness.unwrap().kind(), want);
    }
}

#[test]
fn int32_labels_are_accepted() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3)).unwrap();
    let x = random_scores(4, 3, 2).to_kind(Kind::Float);
    let a = loss
        .forward(&x, &Tensor::from_slice(&[0i32, 1, 2, 2]), None, None)
        .unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let mut loss2 = SeesawLoss::new(vs2.root(), SeesawConfig::classification(3)).unwrap();
    let b = loss2
        .forward(&x, &Tensor::from_slice(&[0i64, 1, 2, 2]), None, None)
        .unwrap();
    assert_eq!(scalar(&a.classes), scalar(&b.classes));
}

#[test]
fn functional_form_matches_the_oracle_and_leaves_counts_alone() {
    let labels = [0i64, 2, 2, 1, 0];
    let counts = Tensor::from_slice(&[40i64, 2, 9]);
    let scores = random_scores(5, 3, 5).to_kind(Kind::Float);
    let weights_v = [1.0, 0.5, 2.0, 1.0, 0.1];
    let weights = Tensor::from_slice(&weights_v).to_kind(Kind::Float);
    for (reduction, avg) in [
        (Reduction::Mean, None),
        (Reduction::Mean, Some(3.0)),
        (Reduction::Sum, None),
        (Reduction::None, None),
    ] {
        let got = seesaw_loss::seesaw_ce_loss(
            &scores,
            &Tensor::from_slice(&labels),
            Some(&weights),
            &counts,
            0.8,
            2.0,
            1e-2,
            reduction,
            avg,
        )
        .unwrap();
        let spec = CallSpec {
            reduction,
            avg_factor: avg,
            weights: Some(&weights_v),
            ..CallSpec::new(false, 3)
        };
        let want = expected(&to_rows(&scores), &labels, &[40.0, 2.0, 9.0], &spec);
        assert_close(&to_vec(&got), &want.classes, 1e-5, "functional");
    }
    assert_eq!(to_i64(&counts), [40, 2, 9]);
}

#[test]
fn activation_matches_mmdetection_get_activation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(2)).unwrap();
    let row = [1.0f64, 2.0, 0.5, -0.5];
    let scores = Tensor::from_slice(&row).view([1, 4]).to_kind(Kind::Float);
    let got = to_vec(&loss.activation(&scores).unwrap());
    let (e0, e1) = (1f64.exp(), 2f64.exp());
    let (o0, o1) = (0.5f64.exp(), (-0.5f64).exp());
    let fg = o0 / (o0 + o1);
    let want = [e0 / (e0 + e1) * fg, e1 / (e0 + e1) * fg, o1 / (o0 + o1)];
    assert_close(&got, &want, 1e-6, "activation");
    let cls = SeesawLoss::new(vs.root() / "c", SeesawConfig::classification(4)).unwrap();
    let x = random_scores(3, 4, 1).to_kind(Kind::Float);
    assert_close(
        &to_vec(&cls.activation(&x).unwrap()),
        &to_vec(&x.softmax(1, Kind::Float)),
        1e-7,
        "softmax",
    );
}

#[test]
fn accuracy_reports_percent_over_positive_rows_and_all_rows() {
    let vs = nn::VarStore::new(Device::Cpu);
    let loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(2)).unwrap();
    // Rows: label 0 predicted 0 (fg right), label 1 predicted 0 (fg wrong
    // objectness), label 2 (background) predicted background, label 1 right.
    let scores = Tensor::from_slice(&[
        5f32, 0., 3., 0., //
        5., 0., 0., 3., //
        0., 0., 0., 3., //
        0., 5., 3., 0.,
    ])
    .view([4, 4]);
    let acc = loss.accuracy(&scores, &Tensor::from_slice(&[0i64, 1, 2, 1])).unwrap();
    assert!((acc.classes - 200.0 / 3.0).abs() < 1e-9, "{acc:?}");
    assert_eq!(acc.objectness, Some(75.0));
    let none = loss.accuracy(&scores, &Tensor::from_slice(&[2i64, 2, 2, 2])).unwrap();
    assert_eq!(none.classes, 0.0);
}

#[test]
fn half_kinds_and_strided_scores_agree_with_f32_on_every_backend() {
    // The same values (rounded to bf16 so that every kind holds them exactly)
    // in f16, bf16, and as a strided view give the f32 result.
    let base = (random_scores(32, 9, 21) * 0.5)
        .to_kind(Kind::BFloat16)
        .to_kind(Kind::Float);
    let labels = random_labels(32, 8, 22);
    for backend in BACKENDS {
        let run = |x: &Tensor| {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(7).backend(backend)).unwrap();
            let leaf = x.detach().set_requires_grad(true);
            let out = loss
                .forward_with_reduction(&leaf, &labels, None, None, Reduction::None)
                .unwrap();
            out.total().backward();
            (
                to_vec(&out.classes),
                to_vec(out.objectness.as_ref().unwrap()),
                to_vec(&leaf.grad()),
            )
        };
        let want = run(&base);
        for kind in [Kind::Half, Kind::BFloat16] {
            let got = run(&base.to_kind(kind));
            assert_close(&got.0, &want.0, 1e-5, &format!("{backend:?} {kind:?} classes"));
            assert_close(&got.1, &want.1, 1e-5, &format!("{backend:?} {kind:?} objectness"));
            // The gradient is returned in the scores' kind, so each entry is
            // the f32 gradient rounded to that kind: within two half-ulps
            // (relative 2^-10 for f16's 11 significant bits, 2^-8 for bf16's 8).
            let rel = if kind == Kind::Half {
                2f64.powi(-10)
            } else {
                2f64.powi(-8)
            };
            for (g, w) in got.2.iter().zip(&want.2) {
                assert!(
                    (g - w).abs() <= rel * w.abs() + 1e-7,
                    "{backend:?} {kind:?} gradient {g} vs {w}"
                );
            }
        }
        let wide = Tensor::zeros([32, 18], (Kind::Float, Device::Cpu));
        wide.slice(1, 0, 18, 2).copy_(&base);
        let strided = wide.slice(1, 0, 18, 2);
        assert!(!strided.is_contiguous());
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(7).backend(backend)).unwrap();
        let out = loss
            .forward_with_reduction(&strided, &labels, None, None, Reduction::None)
            .unwrap();
        assert_close(&to_vec(&out.classes), &want.0, 1e-6, &format!("{backend:?} strided"));
    }
}
