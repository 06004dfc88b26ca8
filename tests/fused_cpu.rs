//! The CPU mirror of the kernel against the reference path over the sweep of
//! shapes, kinds and options (tolerances: `common::tolerance`).

mod common;

use common::*;
use seesaw_loss::Backend;
use tch::Device;

#[test]
fn cpu_mirror_matches_the_reference_over_the_sweep() {
    let cases = sweep_cases(10_000_000);
    let mut worst = (0f64, 0f64);
    for (i, case) in cases.iter().enumerate() {
        let (out, grad) = sweep_case(
            *case,
            (Backend::Fused, Device::Cpu),
            (Backend::Reference, Device::Cpu),
            i as i64,
        );
        let tol = tolerance(case.kind);
        assert!(
            out <= tol && grad <= tol,
            "{case:?}: output rel err {out:e}, gradient rel err {grad:e}, tolerance {tol:e}"
        );
        worst = (worst.0.max(out), worst.1.max(grad));
    }
    println!(
        "{} cases, worst relative error: outputs {:e}, gradients {:e}",
        cases.len(),
        worst.0,
        worst.1
    );
}
