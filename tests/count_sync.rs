//! Data-parallel counts (`CountSync`) on the reference path and the CPU
//! mirror: ranks as threads, held to one loss fed the whole batches.

#[path = "common/ranks.rs"]
mod ranks;

use ranks::*;
use seesaw_loss::Backend;

#[test]
fn ranks_match_one_loss_on_the_reference_path() {
    ranks_match_one_loss_fed_the_whole_batches(Backend::Reference);
}

#[test]
fn ranks_match_one_loss_on_the_cpu_mirror() {
    ranks_match_one_loss_fed_the_whole_batches(Backend::Fused);
}

#[test]
fn a_bad_shard_counts_as_absent_on_the_reference_path() {
    a_bad_shard_counts_as_absent(Backend::Reference);
}

#[test]
fn a_bad_shard_counts_as_absent_on_the_cpu_mirror() {
    a_bad_shard_counts_as_absent(Backend::Fused);
}

#[test]
fn a_deferred_bad_shard_counts_as_absent_on_the_cpu_mirror() {
    a_deferred_bad_shard_counts_as_absent(Backend::Fused);
}

/// What the hook path costs by itself (a hook that does nothing: the
/// histogram, adding it, the class table made again), per forward call on
/// the CPU mirror and the reference path; printed for RESULTS.md (no timed
/// assertion).
#[test]
fn what_the_hook_path_costs() {
    for backend in [Backend::Fused, Backend::Reference] {
        for rows in [64, 4096] {
            let (without, with) = hook_overhead(backend, rows, 20);
            println!(
                "{backend:?}, {rows} rows x {CLASSES} classes: {without:.1} us per forward without a hook, \
                 {with:.1} us with one"
            );
        }
    }
}
