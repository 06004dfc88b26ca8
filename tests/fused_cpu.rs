//! The CPU mirror of the kernel against the reference path over the sweep of
//! shapes, kinds and options (tolerances: `common::tolerance`).

mod common;

use common::*;
use seesaw_loss::Backend;
use tch::Device;

#[test]
fn cpu_mirror_matches_the_reference_over_the_sweep() {
    let cases = sweep_cases(10_000_000);
    let (out, grad) = assert_sweep(
        &cases,
        (Backend::Fused, Device::Cpu),
        (Backend::Reference, Device::Cpu),
        0,
    );
    println!(
        "{} cases, worst relative error: outputs {out:e}, gradients {grad:e}",
        cases.len()
    );
}

/// Configurations at the edges of f32, on the CPU mirror.
#[test]
fn the_paths_agree_at_the_edges_of_f32() {
    the_paths_agree_at_the_edges_of_f32_on(Device::Cpu);
}
