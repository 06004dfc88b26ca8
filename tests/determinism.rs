//! The default CPU path (the CPU mirror) gives the same bits whatever the
//! number of threads: each row's values depend on that row alone, and the
//! reductions sum rows in a fixed order. (The kernels' run-to-run check is
//! in common/kernel.rs, for the emulator and the GPU.)

mod common;

use common::*;
use seesaw_loss::{Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// Bit patterns of a float tensor.
fn bits(t: &Tensor) -> Vec<u32> {
    to_vec(&t.to_kind(Kind::Float))
        .into_iter()
        .map(|v| (v as f32).to_bits())
        .collect()
}

/// Losses, gradients (node and forward_backward) and counts of two steps.
fn steps(threads: i32) -> Vec<Vec<u32>> {
    tch::set_num_threads(threads);
    let (c, n) = (1203, 2048);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(c)).unwrap();
    let mut out = Vec::new();
    for step in 0..2 {
        let scores = random_scores(n, c + 2, 70 + step).to_kind(Kind::Float);
        let labels = random_labels(n, 4 * c, 80 + step).clamp_max(c);
        let weights = random_scores(n, 1, 90 + step).view([n]).to_kind(Kind::Float).abs();
        let leaf = scores.detach().set_requires_grad(true);
        let parts = loss.forward(&leaf, &labels, Some(&weights), None).unwrap();
        parts.total().backward();
        out.push(bits(&parts.classes));
        out.push(bits(&parts.objectness.unwrap()));
        out.push(bits(&leaf.grad()));
        let (parts, grad) = loss
            .forward_backward_with_reduction(&scores, &labels, None, None, Reduction::Sum)
            .unwrap();
        out.push(bits(&parts.total()));
        out.push(bits(&grad));
        out.push(
            to_i64(&loss.cum_samples().unwrap())
                .into_iter()
                .map(|v| v as u32)
                .collect(),
        );
    }
    out
}

#[test]
fn the_cpu_mirror_gives_the_same_bits_for_1_2_and_16_threads() {
    let one = steps(1);
    for threads in [2, 16] {
        assert!(steps(threads) == one, "{threads} threads differ from 1");
    }
    // And from run to run.
    assert!(steps(1) == one);
}
