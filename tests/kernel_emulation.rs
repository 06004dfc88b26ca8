//! The CUDA path without a GPU: the kernel source (`kernels/seesaw.cu`) and
//! the host code that launches it (`src/fused/cuda.rs`), run on CPU tensors
//! by the host emulator (`kernels/emulator.cpp`, feature `testing`,
//! which `scripts/test.sh` turns on), through the same checks as the GPU
//! (`common/kernel.rs`). The emulator fails a launch whose arguments do not
//! match the kernel's parameters or whose warps diverge at an intrinsic, and
//! stops the process on an access past the end of a buffer.
#![cfg(feature = "testing")]

mod common;

use common::*;
use tch::Device;

/// Every fused call on CPU tensors in this process runs the emulated kernels,
/// with outputs poisoned so that an element a kernel skips fails the checks.
fn emulated() -> Device {
    seesaw_loss::testing::poison_outputs(true);
    seesaw_loss::testing::emulate_kernels();
    Device::Cpu
}

/// The sweep up to 512 rows: every C (100,000 included), kind, head and
/// option. More rows only add blocks, which the emulator runs alike.
#[test]
fn emulated_kernel_matches_the_reference_over_the_sweep() {
    let cases: Vec<SweepCase> = sweep_cases(2_000_000).into_iter().filter(|c| c.n <= 512).collect();
    let (out, grad) = kernel::matches_the_reference(emulated(), &cases);
    println!(
        "emulated sweep: {} cases, worst relative error outputs {out:e}, gradients {grad:e}",
        cases.len()
    );
}

#[test]
fn emulated_count_kernel_matches_the_host() {
    // Enough rows for several blocks of atomics racing on few counters.
    kernel::counts_update_matches_the_host(emulated(), 10_000);
}

#[test]
fn out_of_range_labels_are_errors_before_any_launch() {
    kernel::out_of_range_labels_are_errors_not_faults(emulated());
}

#[test]
fn emulated_backward_reaches_the_scores() {
    kernel::backward_reaches_the_scores(emulated());
}

#[test]
fn emulated_node_and_forward_backward_match_the_reference() {
    kernel::node_and_forward_backward_match_the_reference(emulated());
}

#[test]
fn a_deferred_bad_batch_changes_nothing_and_errors_later() {
    kernel::a_deferred_bad_batch_changes_nothing_and_errors_later(emulated());
}

#[test]
fn the_emulated_default_matches_the_reference() {
    kernel::the_default_matches_the_reference(emulated());
}

#[test]
fn a_failed_call_takes_its_batch_back_out() {
    kernel::a_failed_call_takes_its_batch_back_out(emulated());
}

#[test]
fn emulated_steps_are_bitwise_reproducible() {
    kernel::steps_are_bitwise_reproducible(emulated());
}

#[test]
fn the_emulated_kernels_agree_with_the_reference_at_the_edges_of_f32() {
    the_paths_agree_at_the_edges_of_f32_on(emulated());
}
