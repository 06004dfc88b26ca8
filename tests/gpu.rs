//! The CUDA kernel against the reference path on the GPU and against the CPU
//! mirror (the device-independent checks live in `common/kernel.rs`, which
//! `tests/kernel_emulation.rs` also runs without a GPU). Runs whenever libtorch sees CUDA; `SEESAW_REQUIRE_CUDA=1` turns a
//! missing GPU into a failure so that a GPU run cannot pass by skipping.
//! Outputs are poisoned with NaN before each launch (`testing::poison_outputs`).

#![cfg(feature = "testing")]

mod common;

use common::*;
use seesaw_loss::{Backend, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

fn cuda() -> Option<Device> {
    seesaw_loss::testing::poison_outputs(true);
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
    let (out, grad) = kernel::matches_the_reference(dev, &cases);
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
    kernel::counts_update_matches_the_host(dev, 100_000);
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
    kernel::out_of_range_labels_are_errors_not_faults(dev);
}

#[test]
fn backward_on_the_autograd_thread_reaches_the_scores() {
    let Some(dev) = cuda() else { return };
    kernel::backward_reaches_the_scores(dev);
}

#[test]
fn node_and_forward_backward_match_the_reference_on_the_gpu() {
    let Some(dev) = cuda() else { return };
    kernel::node_and_forward_backward_match_the_reference(dev);
}

#[test]
fn a_deferred_bad_batch_on_the_gpu_changes_nothing_and_errors_later() {
    let Some(dev) = cuda() else { return };
    kernel::a_deferred_bad_batch_changes_nothing_and_errors_later(dev);
    tch::Cuda::synchronize(0);
}

#[test]
fn the_default_matches_the_reference_on_the_gpu() {
    let Some(dev) = cuda() else { return };
    kernel::the_default_matches_the_reference(dev);
    tch::Cuda::synchronize(0);
}

#[test]
fn a_failed_call_takes_its_batch_back_out_on_the_device() {
    let Some(dev) = cuda() else { return };
    kernel::a_failed_call_takes_its_batch_back_out(dev);
    tch::Cuda::synchronize(0);
}

#[test]
fn steps_on_the_gpu_are_bitwise_reproducible() {
    let Some(dev) = cuda() else { return };
    kernel::steps_are_bitwise_reproducible(dev);
}
