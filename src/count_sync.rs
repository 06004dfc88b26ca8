//! Class counts that are global across the ranks of data-parallel training.
//!
//! Seesaw's weights come from the cumulative class counts the loss keeps. In
//! data-parallel training each rank sees only its shard of every batch, and
//! what the counts then mean depends on what is done with them:
//!
//! - **local** (no [`CountSync`], the default, and mmdetection's behaviour,
//!   whose model wrapper does not broadcast buffers): each rank counts its
//!   own shards. The ranks' counts drift apart, and each rank's weights
//!   follow the class frequencies of a 1/world sample of the data.
//! - **rank-0 broadcast** (PyTorch DDP's default for buffers): every rank
//!   uses rank 0's counts, so the other ranks' labels are never counted; the
//!   weights follow a 1/world sample, the same on every rank.
//! - **global** (a [`CountSync`]): every step, each rank's histogram of its
//!   shard's labels is summed over all ranks before it is added to the
//!   counts, so every rank holds the counts of all the data seen so far, and
//!   each step's weights are those single-process training of the
//!   concatenated batch would use. This is what the loss means.
//!
//! The hook runs inside every call of [`SeesawLoss`](crate::SeesawLoss)'s
//! forward methods, between checking the step's labels and using the counts.
//! It moves one int64 per counter (`8 x (C + 1)` bytes for a detection head)
//! per step. A rank whose batch fails validation contributes zeros and
//! still joins the collective, so no rank waits forever, and adds the other
//! ranks' labels, so the counts stay the same on every rank, as if that
//! shard were absent. Its call returns the error as in a single process:
//! at once under [`Checks::Immediate`](crate::Checks::Immediate); under
//! [`Checks::Deferred`](crate::Checks::Deferred) (the CUDA default) the
//! call returns NaN losses, counts nothing of its own, and the error comes
//! at a later call (which then fails too, and joins with nothing) or
//! [`SeesawLoss::check`](crate::SeesawLoss::check). Every rank must call the
//! loss the same number of times, in step.

use tch::Tensor;

use crate::error::Result;

/// Sums a step's per-class label histogram over all ranks.
///
/// The loss calls [`sum_over_ranks`](CountSync::sum_over_ranks) once per
/// forward call, on every rank, with an int64 tensor of one entry per
/// counter on the counts' device; the implementation replaces its values
/// with their sum over all ranks, in place. On a GPU it should queue the
/// reduction on the current stream and return without waiting (as an NCCL
/// all-reduce does), so the step keeps no host wait.
///
/// ```
/// use seesaw_loss::{CountSync, Result};
/// use tch::Tensor;
///
/// /// One rank alone: the histogram is already the sum.
/// struct Alone;
///
/// impl CountSync for Alone {
///     fn sum_over_ranks(&mut self, _histogram: &mut Tensor) -> Result<()> {
///         Ok(())
///     }
/// }
/// ```
pub trait CountSync: Send {
    /// Replaces `histogram` with its element-wise sum over all ranks.
    fn sum_over_ranks(&mut self, histogram: &mut Tensor) -> Result<()>;
}
