//! `NormedLinear`, mmdetection's cosine classifier: against a hand
//! computation, and its gradients against float64 finite differences.

use seesaw_loss::{Error, NormedLinear, NormedLinearConfig};
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// `temperature * x/(|x| + eps) . w/(|w| + eps) + b`, worked by hand.
#[test]
fn matches_a_hand_computation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let head = NormedLinear::new(vs.root(), 2, 2, NormedLinearConfig::default()).unwrap();
    tch::no_grad(|| {
        head.weight
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[3.0f32, 4.0, 0.0, 2.0]).view([2, 2]));
        head.bias
            .as_ref()
            .unwrap()
            .shallow_clone()
            .copy_(&Tensor::from_slice(&[0.5f32, -1.0]));
    });
    let x = Tensor::from_slice(&[6.0f32, 8.0, 0.0, 0.0]).view([2, 2]);
    let out: Vec<f32> = Vec::try_from(head.forward(&x).view([-1])).unwrap();
    let eps = 1e-6f64;
    // Row 0: x = (6, 8), |x| = 10; w0 = (3, 4), |w0| = 5; w1 = (0, 2), |w1| = 2.
    let x0 = [6.0 / (10.0 + eps), 8.0 / (10.0 + eps)];
    let w0 = [3.0 / (5.0 + eps), 4.0 / (5.0 + eps)];
    let w1 = [0.0, 2.0 / (2.0 + eps)];
    let want = [
        20.0 * (x0[0] * w0[0] + x0[1] * w0[1]) + 0.5,
        20.0 * (x0[0] * w1[0] + x0[1] * w1[1]) - 1.0,
        // Row 1 is zero: eps keeps it finite, the output is the bias.
        0.5,
        -1.0,
    ];
    for (got, want) in out.iter().zip(want) {
        assert!((*got as f64 - want).abs() < 1e-5, "{out:?} vs {want:?}");
    }
}

/// d(sum of outputs * r)/d(inputs, weights, bias) from autograd against
/// central finite differences, all in float64 (the VarStore turned to f64).
#[test]
fn gradients_match_finite_differences_in_f64() {
    tch::manual_seed(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let config = NormedLinearConfig {
        power: 1.5,
        ..Default::default()
    };
    let head = NormedLinear::new(vs.root(), 5, 4, config).unwrap();
    vs.double();
    let x = Tensor::randn([3, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let r = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
    let value = || (head.f_forward(&x).unwrap() * &r).sum(Kind::Double);
    value().backward();
    let h = 1e-6;
    for (name, t) in [
        ("x", &x),
        ("weight", &head.weight),
        ("bias", head.bias.as_ref().unwrap()),
    ] {
        assert_eq!(t.kind(), Kind::Double);
        let grad = t.grad().view([-1]);
        for i in 0..t.numel() as i64 {
            let at = |d: f64| {
                tch::no_grad(|| {
                    let _ = t.view([-1]).get(i).f_add_(&Tensor::from(d)).unwrap();
                });
                let v = tch::no_grad(|| value().double_value(&[]));
                tch::no_grad(|| {
                    let _ = t.view([-1]).get(i).f_sub_(&Tensor::from(d)).unwrap();
                });
                v
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let analytic = grad.double_value(&[i]);
            assert!(
                (numeric - analytic).abs() < 1e-6 * (1.0 + numeric.abs()),
                "d/d{name}[{i}]: finite differences {numeric}, autograd {analytic}"
            );
        }
    }
}

#[test]
fn a_wrong_width_is_a_shape_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let head = NormedLinear::new(vs.root(), 8, 3, NormedLinearConfig::default()).unwrap();
    let err = head
        .f_forward(&Tensor::zeros([2, 5], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
}
