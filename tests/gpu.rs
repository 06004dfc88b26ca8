//! The CUDA kernel against the reference path on the GPU and against the CPU
//! mirror. Runs whenever libtorch sees CUDA; `SEESAW_REQUIRE_CUDA=1` turns a
//! missing GPU into a failure so that a GPU run cannot pass by skipping.
//! Outputs are poisoned with NaN before each launch (`SEESAW_POISON_OUTPUTS`).

mod common;

use common::*;
use seesaw_loss::{Backend, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

fn cuda() -> Option<Device> {
    std::env::set_var("SEESAW_POISON_OUTPUTS", "1");
    if tch::Cuda::is_available() {
        return Some(Device::Cuda(0));
    }
    if std::env::var("SEESAW_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("SEESAW_REQUIRE_CUDA=1 but libtorch sees no CUDA device");
    }
    eprintln!("skipped: no CUDA device");
    None
}

#[test]
fn kernel_matches_the_reference_on_the_gpu_over_the_sweep() {
    let Some(dev) = cuda() else { return };
    let cases = sweep_cases(200_000_000);
    let (out, grad) = assert_sweep(&cases, (Backend::Fused, dev), (Backend::Reference, dev), 0);
    println!(
        "GPU sweep: {} cases, worst relative error outputs {out:e}, gradients {grad:e}",
        cases.len()
    );
}

#[test]
fn kernel_matches_the_cpu_mirror() {
    let Some(dev) = cuda() else { return };
    assert_sweep(
        &sweep_cases(20_000_000),
        (Backend::Fused, dev),
        (Backend::Fused, Device::Cpu),
        7000,
    );
}

#[test]
fn kernel_handles_a_million_rows() {
    let Some(dev) = cuda() else { return };
    let cases = [Kind::Float, Kind::BFloat16].map(|kind| SweepCase::new(true, 80, 1_000_000, kind));
    assert_sweep(&cases, (Backend::Fused, dev), (Backend::Reference, dev), 99);
}

#[test]
fn counts_update_on_the_device_matches_the_host() {
    let Some(dev) = cuda() else { return };
    let labels = random_labels(100_000, 81, 3);
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(80).backend(Backend::Fused)).unwrap();
    let x = Tensor::zeros([100_000, 82], (Kind::Float, dev));
    loss.forward(&x, &labels.to_device(dev), None, None).unwrap();
    loss.forward(&x, &labels.to_device(dev), None, None).unwrap();
    let want = labels.bincount::<Tensor>(None, 81) * 2;
    assert_eq!(to_i64(&loss.cum_samples()), to_i64(&want));
}

#[test]
fn labels_weights_and_counts_on_another_device_are_errors() {
    let Some(dev) = cuda() else { return };
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3)).unwrap();
    let x = Tensor::zeros([2, 5], (Kind::Float, dev));
    let y_cpu = Tensor::from_slice(&[0i64, 1]);
    let err = loss.forward(&x, &y_cpu, None, None).unwrap_err();
    assert!(
        err.to_string().contains("labels is on Cpu but cls_score is on Cuda(0)"),
        "{err}"
    );
    let w_cpu = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let err = loss.forward(&x, &y_cpu.to_device(dev), Some(&w_cpu), None).unwrap_err();
    assert!(err.to_string().contains("label_weights is on Cpu"), "{err}");
    let vs_cpu = nn::VarStore::new(Device::Cpu);
    let mut cpu_loss = SeesawLoss::new(vs_cpu.root(), SeesawConfig::detection(3)).unwrap();
    let err = cpu_loss.forward(&x, &y_cpu.to_device(dev), None, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("cum_samples is on Cpu but cls_score is on Cuda(0)"),
        "{err}"
    );
    assert_eq!(to_i64(&loss.cum_samples()), [0, 0, 0, 0]);
}

#[test]
fn out_of_range_labels_on_the_gpu_are_errors_not_faults() {
    let Some(dev) = cuda() else { return };
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3).backend(Backend::Fused)).unwrap();
    let x = Tensor::zeros([2, 5], (Kind::Float, dev));
    let err = loss
        .forward(&x, &Tensor::from_slice(&[0i64, 1000]).to_device(dev), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("found label 1000"), "{err}");
    assert_eq!(to_i64(&loss.cum_samples()), [0, 0, 0, 0]);
    // The device is still healthy.
    loss.forward(&x, &Tensor::from_slice(&[0i64, 3]).to_device(dev), None, None)
        .unwrap();
}

#[test]
fn backward_on_the_autograd_thread_reaches_the_scores() {
    let Some(dev) = cuda() else { return };
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(10).backend(Backend::Fused)).unwrap();
    let x = Tensor::randn([64, 10], (Kind::Float, dev)).set_requires_grad(true);
    let out = loss
        .forward(&x, &Tensor::randint(10, [64], (Kind::Int64, dev)), None, None)
        .unwrap();
    (out.total() * 3.0).backward();
    assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn node_and_forward_backward_match_the_reference_on_the_gpu() {
    let Some(dev) = cuda() else { return };
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
        // An upstream gradient other than 1, through the node.
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

#[test]
fn without_host_checks_bad_labels_give_nan_rows_not_faults() {
    let Some(dev) = cuda() else { return };
    let vs = nn::VarStore::new(dev);
    let config = SeesawConfig::detection(3).device_checks_on_host(false);
    let mut loss = SeesawLoss::new(vs.root(), config).unwrap();
    let scores = Tensor::randn([4, 5], (Kind::Float, dev)).set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 9, 3, -1]).to_device(dev);
    let out = loss
        .forward_with_reduction(&scores, &labels, None, None, seesaw_loss::Reduction::Sum)
        .unwrap();
    assert!(out.total().double_value(&[]).is_nan());
    out.total().backward();
    let grad = scores.grad().to_device(Device::Cpu);
    // Rows 1 and 3 (bad labels) get a zero gradient; the kernel never faults.
    assert_eq!(grad.get(1).abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert_eq!(grad.get(3).abs().sum(Kind::Float).double_value(&[]), 0.0);
    // Only the good labels were counted.
    assert_eq!(
        Vec::<i64>::try_from(loss.cum_samples().to_device(Device::Cpu)).unwrap(),
        [1, 0, 0, 1]
    );
    tch::Cuda::synchronize(0);
}

#[test]
fn a_failed_call_without_host_checks_takes_its_batch_back_out_on_the_device() {
    let Some(dev) = cuda() else { return };
    let vs = nn::VarStore::new(dev);
    let config = SeesawConfig::detection(3).device_checks_on_host(false);
    let mut loss = SeesawLoss::new(vs.root(), config).unwrap();
    let scores = Tensor::randn([4, 5], (Kind::Float, dev));
    // Row 1's label is out of range: the rollback must skip it as the count
    // kernel did, never index the counts with it.
    let labels = Tensor::from_slice(&[0i64, 9, 3, 2]).to_device(dev);
    loss.forward(&scores, &labels, None, None).unwrap();
    let before = Vec::<i64>::try_from(loss.cum_samples().to_device(Device::Cpu)).unwrap();
    assert_eq!(before, [1, 0, 1, 1]);
    // CUDA forward callbacks run on the calling thread, where the fault is armed.
    seesaw_loss::autograd_testing::inject(seesaw_loss::autograd_testing::Fault::ForwardError);
    assert!(loss.forward(&scores, &labels, None, None).is_err());
    let after = Vec::<i64>::try_from(loss.cum_samples().to_device(Device::Cpu)).unwrap();
    assert_eq!(after, before);
    tch::Cuda::synchronize(0);
}
