//! What one training step on the CUDA path costs besides arithmetic,
//! counted on CPU through the kernel emulator with the CUDA defaults (feature
//! `testing`): crate kernel launches, libtorch operations and host reads,
//! held to plain cross-entropy's step on the same rows. One test per file:
//! the counters are process-wide.
#![cfg(feature = "testing")]

mod common;

use common::budget::*;
use seesaw_loss::testing;
use seesaw_loss::{SeesawConfig, SeesawLoss};
use tch::{nn, Device};

#[test]
fn a_kernel_step_launches_three_kernels_reads_nothing_back_and_launches_no_more_than_cross_entropy() {
    testing::emulate_kernels();
    let (scores, labels) = batch(256);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(1203)).unwrap();
    let seesaw = measure(|| seesaw_step(&mut loss, &scores, &labels));
    let ce_scores = ce_scores(&scores);
    let ce = measure(|| cross_entropy_step(&ce_scores, &labels));
    println!("kernel step: {seesaw:?}; cross-entropy step: {ce:?}");
    assert_eq!(seesaw.crate_launches, 3, "prepare, forward, backward");
    assert_eq!(seesaw.host_reads, 0);
    assert!(
        seesaw.launches() <= ce.launches(),
        "{} launches against cross-entropy's {}",
        seesaw.launches(),
        ce.launches()
    );
    // forward_backward: prepare and one fused kernel.
    let fb = measure(|| {
        let _ = loss.forward_backward(&scores, &labels, None, None).unwrap();
    });
    println!("kernel forward_backward: {fb:?}");
    assert_eq!(fb.crate_launches, 2);
    assert_eq!(fb.host_reads, 0);
}
