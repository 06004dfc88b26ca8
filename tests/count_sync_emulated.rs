//! Data-parallel counts (`CountSync`) through the CUDA path's host code and
//! kernels, emulated (feature `testing`): ranks as threads, held to one loss
//! fed the whole batches.
#![cfg(feature = "testing")]

#[path = "common/ranks.rs"]
#[allow(dead_code)]
mod ranks;

use ranks::*;
use seesaw_loss::Backend;

#[test]
fn ranks_match_one_loss_on_the_emulated_kernels() {
    seesaw_loss::testing::emulate_kernels();
    ranks_match_one_loss_fed_the_whole_batches(Backend::Fused);
    a_bad_shard_counts_as_absent(Backend::Fused);
    a_deferred_bad_shard_counts_as_absent(Backend::Fused);
}
