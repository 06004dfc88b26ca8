//! The shapes both benchmark programs measure, and how to build a loss and
//! inputs for one.
#![allow(dead_code)]

pub mod machine;

use seesaw_loss::{Backend, SeesawConfig, SeesawLoss};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A benchmark shape: head, classes, rows.
pub struct Shape {
    pub name: &'static str,
    pub detection: bool,
    pub classes: i64,
    pub rows: i64,
}

const fn shape(name: &'static str, detection: bool, classes: i64, rows: i64) -> Shape {
    Shape {
        name,
        detection,
        classes,
        rows,
    }
}

/// LVIS v1 detection heads (RoIs per step; 16 rows measures the fixed cost
/// of a call, where the dispatch of each libtorch operation outweighs its
/// work), ImageNet-LT classifiers (images per step) and a large label space.
pub const SHAPES: &[Shape] = &[
    shape("lvis-det", true, 1203, 16),
    shape("lvis-det", true, 1203, 512),
    shape("lvis-det", true, 1203, 4096),
    shape("lvis-det", true, 1203, 8192),
    shape("lvis-det", true, 1203, 65536),
    shape("imagenet-lt", false, 1000, 256),
    shape("imagenet-lt", false, 1000, 4096),
    shape("large-vocab", false, 32000, 4096),
];

/// Shapes only the GPU program measures: the row kernels' other layouts. A
/// wide head with few rows (a block per row, each row read once per pass past
/// the registers' 10240 classes) and 8192 classes (a block per row, held in
/// registers).
pub const GPU_SHAPES: &[Shape] = &[
    shape("wide-head", false, 100_000, 64),
    shape("vocab-8k", false, 8192, 2048),
];

/// The shape of [`SHAPES`] a command line names as `name:rows`
/// (`lvis-det:4096`); panics with the format when there is none.
pub fn named(pick: &str) -> &'static Shape {
    SHAPES
        .iter()
        .find(|s| format!("{}:{}", s.name, s.rows) == pick)
        .unwrap_or_else(|| panic!("no shape {pick} in benches/common (name:rows)"))
}

/// The LVIS shape the GPU targets are set at: C = 1203, N = 8192.
pub fn lvis_8192() -> &'static Shape {
    SHAPES
        .iter()
        .find(|s| s.detection && s.classes == 1203 && s.rows == 8192)
        .expect("the shape table has LVIS at N = 8192")
}

impl Shape {
    /// Columns of `cls_score`.
    pub fn width(&self) -> i64 {
        if self.detection {
            self.classes + 2
        } else {
            self.classes
        }
    }

    pub fn config(&self, backend: Backend) -> SeesawConfig {
        let c = if self.detection {
            SeesawConfig::detection(self.classes)
        } else {
            SeesawConfig::classification(self.classes)
        };
        c.backend(backend)
    }

    /// `count` independent (scores, labels) pairs, scores N(0, 4) in `kind`.
    pub fn inputs(&self, count: usize, kind: Kind, device: Device) -> Vec<(Tensor, Tensor)> {
        let high = if self.detection { self.classes + 1 } else { self.classes };
        (0..count)
            .map(|_| {
                let x = (Tensor::randn([self.rows, self.width()], (Kind::Float, device)) * 2.0).to_kind(kind);
                (x, Tensor::randint(high, [self.rows], (Kind::Int64, device)))
            })
            .collect()
    }
}

/// Keeps every freed block in the heap for the rest of the run (glibc:
/// no `mmap` for large blocks, no trimming of the heap's top), unless
/// `SEESAW_BENCH_GLIBC_HEAP=1` leaves glibc's defaults.
///
/// By default glibc gives a freed block of tens of MB back to the system
/// when the heap's free top passes a threshold it moves as it goes, and the
/// next allocation faults the pages in again, zeroed by the kernel. Whether
/// a step meets that depends on the order and sizes of every allocation in
/// the process: the same fused step next to cross-entropy's read 0.36-0.39x
/// in one build and 0.20x in another whose only change was this function,
/// switched off (about 4,400 page faults per pair of steps against 900, and
/// cross-entropy's step twice as long; benches/RESULTS.md). With the heap
/// kept, no step faults a page in once the first steps have grown it: the
/// steady state of a training loop whose allocations repeat, and the same
/// for every build.
pub fn steady_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("SEESAW_BENCH_GLIBC_HEAP").is_ok_and(|v| v == "1") {
        // SAFETY: mallopt only sets allocator parameters; called before
        // any other thread allocates.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// How long `f` takes.
pub fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

/// A training step's forward through `loss` (the autograd node for the
/// fused backend): a fresh leaf of `scores`, the loss, its total (what the
/// step's backward starts from).
pub fn seesaw_step_forward(loss: &mut SeesawLoss, scores: &Tensor, labels: &Tensor) -> Tensor {
    let x = scores.detach().set_requires_grad(true);
    loss.forward(&x, labels, None, None).expect("a valid call").total()
}

/// A training step through `loss`: [`seesaw_step_forward`], then backward
/// into the leaf's gradient.
pub fn seesaw_step(loss: &mut SeesawLoss, scores: &Tensor, labels: &Tensor) {
    seesaw_step_forward(loss, scores, labels).backward();
}

/// Plain cross-entropy's training step, what the fused one is set against:
/// a fresh leaf of `scores`, the loss, backward into the leaf's gradient.
pub fn cross_entropy_step(scores: &Tensor, labels: &Tensor) {
    let x = scores.detach().set_requires_grad(true);
    x.cross_entropy_for_logits(labels).backward();
}

/// The memory traffic a training step through the autograd node cannot
/// avoid, done by libtorch's own vectorised operations and nothing else: one
/// read of the logits (the loss pass; a sum), then a read of them with a
/// write of a fresh tensor of their size (the gradient pass; a
/// multiplication by a scalar). The node keeps nothing N x C between its
/// passes, so no fused step can move less; how close it comes, in a phase of
/// the machine's memory, is its time over this one's.
pub fn traffic_floor_step(scores: &Tensor) {
    traffic_floor_read(scores);
    traffic_floor_write(scores);
}

/// [`traffic_floor_step`]'s first half, the loss pass's traffic: one read.
pub fn traffic_floor_read(scores: &Tensor) {
    drop(scores.sum(Kind::Float));
}

/// [`traffic_floor_step`]'s second half, the gradient pass's traffic: a
/// read, and a write of a fresh tensor.
pub fn traffic_floor_write(scores: &Tensor) {
    drop(scores * 2.0);
}
