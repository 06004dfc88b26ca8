//! Counting what one training step costs besides arithmetic (feature
//! `testing`): crate kernel launches, libtorch operations and host reads.

use seesaw_loss::testing::{self, OpCounts};
use seesaw_loss::SeesawLoss;
use tch::{Device, Kind, Tensor};

/// What a step cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub crate_launches: u64,
    pub libtorch: OpCounts,
    pub host_reads: u64,
}

impl Cost {
    /// Device launches: the crate's kernels and libtorch's.
    pub fn launches(&self) -> u64 {
        self.crate_launches + self.libtorch.launches
    }
}

pub fn measure(mut step: impl FnMut()) -> Cost {
    step(); // warm: compiled kernels, allocator, the operator observer
    let (launches, ops, reads) = (
        testing::kernel_launches(),
        testing::libtorch_ops(),
        testing::host_reads(),
    );
    step();
    let after = testing::libtorch_ops();
    Cost {
        crate_launches: testing::kernel_launches() - launches,
        libtorch: OpCounts {
            calls: after.calls - ops.calls,
            launches: after.launches - ops.launches,
        },
        host_reads: testing::host_reads() - reads,
    }
}

/// An LVIS-shaped detection batch: C = 1203 classes, mostly background.
pub fn batch(rows: i64) -> (Tensor, Tensor) {
    let c = 1203;
    let scores = Tensor::randn([rows, c + 2], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(4 * c, [rows], (Kind::Int64, Device::Cpu)).clamp_max(c);
    (scores, labels)
}

/// One training step of the Seesaw loss: forward, total, backward.
pub fn seesaw_step(loss: &mut SeesawLoss, scores: &Tensor, labels: &Tensor) {
    let leaf = scores.detach().set_requires_grad(true);
    loss.forward(&leaf, labels, None, None).unwrap().total().backward();
}

/// Cross-entropy's step on the same rows, with the `C + 1` outputs (classes
/// and background) a detector trained without Seesaw has.
pub fn cross_entropy_step(scores: &Tensor, labels: &Tensor) {
    let leaf = scores.detach().set_requires_grad(true);
    leaf.cross_entropy_for_logits(labels).backward();
}

/// The scores of the cross-entropy head: one column fewer, laid out as a
/// head produces them.
pub fn ce_scores(scores: &Tensor) -> Tensor {
    scores.narrow(1, 0, scores.size()[1] - 1).contiguous()
}
