//! Bad input comes back as an error that says what was wrong, and leaves the
//! counts as they were.

mod common;

use common::{set_counts, to_i64};
use seesaw_loss::{Backend, Checks, Error, Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

fn zeros(shape: &[i64], kind: Kind) -> Tensor {
    Tensor::zeros(shape, (kind, Device::Cpu))
}

/// `|e| matches!(e, Error::$variant { .. })`: the error's variant.
macro_rules! is {
    ($variant:ident) => {
        |e: &Error| matches!(e, Error::$variant { .. })
    };
}

/// Runs `call` on a loss whose counts are [1, 2, ...] and checks the error's
/// variant and message and that the counts did not move.
fn expect_error(
    config: SeesawConfig,
    call: impl FnOnce(&mut SeesawLoss) -> seesaw_loss::Result<()>,
    variant: fn(&Error) -> bool,
    needle: &str,
) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), config.clone()).unwrap();
    let start: Vec<i64> = (1..=config.num_counters()).collect();
    set_counts(&vs, &start);
    let err = call(&mut loss).expect_err("expected an error");
    assert!(variant(&err), "unexpected variant: {err:?}");
    let msg = format!("{err:#}");
    assert!(msg.contains(needle), "message {msg:?} does not contain {needle:?}");
    assert_eq!(
        Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap(),
        start,
        "counts changed by a failed call"
    );
}

fn det() -> SeesawConfig {
    SeesawConfig::detection(3)
}

fn fwd(loss: &mut SeesawLoss, x: &Tensor, y: &Tensor) -> seesaw_loss::Result<()> {
    loss.forward(x, y, None, None).map(|_| ())
}

#[test]
fn wrong_width_for_the_head() {
    let y = Tensor::from_slice(&[0i64, 1]);
    expect_error(
        det(),
        |l| fwd(l, &zeros(&[2, 3], Kind::Float), &y),
        is!(Shape),
        "cls_score has 3 columns but the detection head expects [N, 5]",
    );
    expect_error(
        SeesawConfig::classification(3),
        |l| fwd(l, &zeros(&[2, 5], Kind::Float), &y),
        is!(Shape),
        "cls_score has 5 columns but the classification head expects [N, 3]",
    );
}

#[test]
fn scores_not_two_dimensional() {
    let y = Tensor::from_slice(&[0i64, 1]);
    expect_error(
        det(),
        |l| fwd(l, &zeros(&[2, 5, 1], Kind::Float), &y),
        is!(Shape),
        "cls_score must be 2-D",
    );
    expect_error(
        det(),
        |l| fwd(l, &zeros(&[5], Kind::Float), &y),
        is!(Shape),
        "cls_score must be 2-D",
    );
}

#[test]
fn integer_or_bool_scores() {
    let y = Tensor::from_slice(&[0i64, 1]);
    expect_error(
        det(),
        |l| fwd(l, &zeros(&[2, 5], Kind::Int64), &y),
        is!(Dtype),
        "cls_score must be f32, f64, f16 or bf16, got Int64",
    );
    expect_error(
        det(),
        |l| fwd(l, &zeros(&[2, 5], Kind::Bool), &y),
        is!(Dtype),
        "got Bool",
    );
}

#[test]
fn labels_out_of_range() {
    let x = zeros(&[2, 5], Kind::Float);
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[0i64, 4])),
        is!(Label),
        "labels must be in [0, 3] (3 = background), found label 4",
    );
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[-1i64, 2])),
        is!(Label),
        "found negative label -1",
    );
    expect_error(
        SeesawConfig::classification(5),
        |l| fwd(l, &x, &Tensor::from_slice(&[0i64, 5])),
        is!(Label),
        "labels must be in [0, 5), found label 5",
    );
}

#[test]
fn floating_or_bool_labels() {
    let x = zeros(&[2, 5], Kind::Float);
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[0.0f32, 1.0])),
        is!(Dtype),
        "labels must hold integer class indices (int64 or int32), got Float",
    );
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[true, false])),
        is!(Dtype),
        "got Bool",
    );
}

#[test]
fn label_or_weight_length_different_from_rows() {
    let x = zeros(&[2, 5], Kind::Float);
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[0i64, 1, 2])),
        is!(Shape),
        "labels has 3 entries but cls_score has 2 rows",
    );
    expect_error(
        det(),
        |l| fwd(l, &x, &Tensor::from_slice(&[0i64, 1]).view([2, 1])),
        is!(Shape),
        "labels must be 1-D [N]",
    );
    let y = Tensor::from_slice(&[0i64, 1]);
    let w = Tensor::from_slice(&[1.0f32]);
    expect_error(
        det(),
        |l| l.forward(&x, &y, Some(&w), None).map(|_| ()),
        is!(Shape),
        "label_weights must have shape [2]",
    );
    let wi = Tensor::from_slice(&[1i64, 1]);
    expect_error(
        det(),
        |l| l.forward(&x, &y, Some(&wi), None).map(|_| ()),
        is!(Dtype),
        "label_weights must be floating",
    );
}

// Tensors on different devices: a CPU-only libtorch has one device, so these
// cases run in tests/gpu.rs (`labels_weights_and_counts_on_another_device_are_errors`).

#[test]
fn avg_factor_with_sum() {
    let x = zeros(&[2, 5], Kind::Float);
    let y = Tensor::from_slice(&[0i64, 1]);
    expect_error(
        det(),
        |l| {
            l.forward_with_reduction(&x, &y, None, Some(4.0), Reduction::Sum)
                .map(|_| ())
        },
        is!(AvgFactor),
        "avg_factor (4) cannot be used with Reduction::Sum",
    );
}

#[test]
fn fused_requested_where_none_exists() {
    let y = Tensor::from_slice(&[0i64, 1]);
    expect_error(
        det().backend(Backend::Fused),
        |l| fwd(l, &zeros(&[2, 5], Kind::Double), &y),
        is!(Dtype),
        "the fused path computes f32, f16 and bf16 scores, got Double",
    );
}

#[test]
fn invalid_config() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cases = [
        (SeesawConfig::detection(0), "num_classes must be at least 1, got 0"),
        (SeesawConfig::classification(-3), "num_classes must be at least 1"),
        (
            SeesawConfig::classification(1 << 31),
            "num_classes must be at most 2147483645",
        ),
        (det().p(-0.1), "p must be a finite number >= 0"),
        (det().q(-1.0), "q must be a finite number >= 0"),
        (det().eps(0.0), "eps must be a finite number > 0"),
        (det().eps(-1e-3), "eps must be a finite number > 0"),
        (det().p(f64::NAN), "p must be a finite number >= 0"),
        // What f32, in which the fused paths compute, cannot hold.
        (det().eps(1e-40), "eps must be at least 1.1754944e-38"),
        (
            det().loss_weight(1e39),
            "loss_weight must be finite and within f32's range",
        ),
        (det().p(1e39), "p must be a finite number >= 0 within f32's range"),
        (det().q(f64::INFINITY), "q must be a finite number >= 0"),
    ];
    for (config, needle) in cases {
        let err = SeesawLoss::new(vs.root(), config).err().expect("expected an error");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(err.to_string().contains(needle), "{err} / {needle}");
    }
}

#[test]
fn nan_logits_propagate_and_are_not_an_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    for backend in [Backend::Reference, Backend::Fused] {
        let mut loss = SeesawLoss::new(vs.root() / format!("{backend:?}"), det().backend(backend)).unwrap();
        let x = Tensor::from_slice(&[f32::NAN, 0., 0., 0., 0., 1., 0., 2., 0., 0.]).view([2, 5]);
        let out = loss
            .forward_with_reduction(&x, &Tensor::from_slice(&[0i64, 1]), None, None, Reduction::None)
            .unwrap();
        let v = Vec::<f64>::try_from(out.classes.to_kind(Kind::Double)).unwrap();
        assert!(v[0].is_nan() && v[1].is_finite(), "{backend:?}: {v:?}");
    }
}

#[test]
fn accuracy_and_activation_check_their_inputs() {
    let vs = nn::VarStore::new(Device::Cpu);
    let loss = SeesawLoss::new(vs.root(), det()).unwrap();
    assert!(loss
        .activation(&zeros(&[2, 4], Kind::Float))
        .unwrap_err()
        .to_string()
        .contains("cls_score has 4 columns"));
    let err = loss
        .accuracy(&zeros(&[2, 5], Kind::Float), &Tensor::from_slice(&[0i64, 9]))
        .unwrap_err();
    assert!(err.to_string().contains("found label 9"), "{err}");
}

#[test]
fn cpu_calls_check_immediately_by_default() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), det()).unwrap();
    let err = loss
        .forward(
            &zeros(&[2, 5], Kind::Float),
            &Tensor::from_slice(&[0i64, 4]),
            None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("found label 4 at row 1"), "{err}");
    let weights = Tensor::from_slice(&[f32::NAN, 1.0]);
    let err = loss
        .forward(
            &zeros(&[2, 5], Kind::Float),
            &Tensor::from_slice(&[0i64, 3]),
            Some(&weights),
            None,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("label_weights must be finite, found NaN at row 0"),
        "{err}"
    );
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
}

#[test]
fn deferred_checks_on_the_cpu_mirror_report_on_the_next_call() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), det().checks(Checks::Deferred)).unwrap();
    let x = zeros(&[2, 5], Kind::Float);
    let out = loss.forward(&x, &Tensor::from_slice(&[0i64, 4]), None, None).unwrap();
    assert!(out.total().double_value(&[]).is_nan());
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
    let err = loss
        .forward(&x, &Tensor::from_slice(&[0i64, 3]), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("found label 4 at row 1"), "{err}");
    loss.forward(&x, &Tensor::from_slice(&[0i64, 3]), None, None).unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [1, 0, 0, 1]);
    // The reference path checks immediately whatever the setting.
    let mut reference = SeesawLoss::new(
        vs.root() / "r",
        det().checks(Checks::Deferred).backend(Backend::Reference),
    )
    .unwrap();
    assert!(reference
        .forward(&x, &Tensor::from_slice(&[0i64, 4]), None, None)
        .is_err());
}
