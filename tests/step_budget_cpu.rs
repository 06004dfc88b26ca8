//! What one training step on the default CPU path (the CPU mirror) costs
//! besides arithmetic (feature `testing`), held to plain cross-entropy's
//! step on the same rows. One test per file: the counters are process-wide.
#![cfg(feature = "testing")]

mod common;

use common::budget::*;
use seesaw_loss::{SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind};

/// The default CPU path (the CPU mirror) folds the same work: a 16-row step
/// makes at most twice cross-entropy's libtorch operator calls, launches no
/// more, and reads nothing back through libtorch.
#[test]
fn a_cpu_mirror_step_makes_at_most_twice_cross_entropys_operator_calls() {
    let (scores, labels) = batch(16);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(1203)).unwrap();
    assert_eq!(
        loss.path_for(Device::Cpu, Kind::Float).unwrap().path,
        seesaw_loss::ComputePath::CpuMirror
    );
    let seesaw = measure(|| seesaw_step(&mut loss, &scores, &labels));
    let ce_scores = ce_scores(&scores);
    let ce = measure(|| cross_entropy_step(&ce_scores, &labels));
    println!("CPU mirror step: {seesaw:?}; cross-entropy step: {ce:?}");
    assert_eq!(seesaw.crate_launches, 0);
    assert_eq!(seesaw.host_reads, 0);
    assert!(
        seesaw.libtorch.calls <= 2 * ce.libtorch.calls,
        "{} operator calls against cross-entropy's {}",
        seesaw.libtorch.calls,
        ce.libtorch.calls
    );
    assert!(seesaw.launches() <= ce.launches());
}
