//! Launches of `kernels/seesaw.cu`: one argument list per kernel, the
//! parameter block first, on libtorch's current stream for the tensors'
//! device, through one `Executor` (the driver, or under the `testing`
//! feature the host emulator). Compilation and the module cache are
//! `compile.rs` and `device.rs`.

use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use tch::{Device, Kind, Tensor};

use super::device::{self, ContextGuard};
use super::{as_contiguous, LossRows, RowTensors, Upstream};
use crate::call::Call;
use crate::config::Reduction;
use crate::deferred::ErrorRecord;
use crate::params::{
    SeesawParams, BLOCKS_PER_SM, COUNT_BLOCK, HELD_PER_THREAD, PREPARE_THREADS, ROW_STATS, STATE_LEN, WARPS_PER_BLOCK,
};
use crate::probe;

pub use super::compile::{
    cache_dir, compile, compile_with_cache, nvrtc_available, ImageFormat, KernelImage, KERNEL_SOURCE, PARAMS_HEADER,
};

/// The row kernels: the loss pass, the gradient pass, both.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
    ForwardBackward,
}

/// How the row kernels spread rows over threads (`SEESAW_KERNELS`' LAYOUT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// A warp per row, [`WARPS_PER_BLOCK`] rows per block.
    Warp,
    /// A block of `32 * WARPS_PER_BLOCK` threads per row.
    Block,
}

/// Threads per block of the row kernels, in either layout.
const ROW_BLOCK_THREADS: u32 = 32 * WARPS_PER_BLOCK;

impl Layout {
    fn threads_per_row(self) -> i64 {
        match self {
            Layout::Warp => 32,
            Layout::Block => ROW_BLOCK_THREADS as i64,
        }
    }

    fn rows_per_block(self) -> i64 {
        match self {
            Layout::Warp => WARPS_PER_BLOCK as i64,
            Layout::Block => 1,
        }
    }

    /// The widest class row the layout holds in registers.
    pub(crate) fn held_classes(self) -> i64 {
        self.threads_per_row() * HELD_PER_THREAD as i64
    }

    /// The layout for `rows` rows of `classes` classes on a device that keeps
    /// `resident_blocks` row-kernel blocks resident: a warp per row when the
    /// rows fit a warp's registers and are enough to give every resident
    /// block a warp per row; else the block per row (few rows keep every
    /// thread busy, and a wide row fits the block's registers, or is read
    /// once per pass past that).
    pub(crate) fn for_shape(rows: i64, classes: i64, resident_blocks: u32) -> Layout {
        if classes <= Layout::Warp.held_classes() && rows >= resident_blocks as i64 * WARPS_PER_BLOCK as i64 {
            Layout::Warp
        } else {
            Layout::Block
        }
    }
}

/// Row kernels by layout, pass and logits' kind (f32, f16, bf16), as
/// `SEESAW_KERNELS` in the source stamps them.
const ROW_KERNELS: [[[&str; 3]; 3]; 2] = [
    [
        [
            "seesaw_forward_f32_warp",
            "seesaw_forward_f16_warp",
            "seesaw_forward_bf16_warp",
        ],
        [
            "seesaw_backward_f32_warp",
            "seesaw_backward_f16_warp",
            "seesaw_backward_bf16_warp",
        ],
        [
            "seesaw_forward_backward_f32_warp",
            "seesaw_forward_backward_f16_warp",
            "seesaw_forward_backward_bf16_warp",
        ],
    ],
    [
        [
            "seesaw_forward_f32_block",
            "seesaw_forward_f16_block",
            "seesaw_forward_bf16_block",
        ],
        [
            "seesaw_backward_f32_block",
            "seesaw_backward_f16_block",
            "seesaw_backward_bf16_block",
        ],
        [
            "seesaw_forward_backward_f32_block",
            "seesaw_forward_backward_f16_block",
            "seesaw_forward_backward_bf16_block",
        ],
    ],
];
const PREPARE_KERNEL: &str = "seesaw_prepare";
const COUNT_KERNEL: &str = "seesaw_count";

/// Every kernel of the module.
pub(crate) fn kernel_names() -> impl Iterator<Item = &'static str> {
    ROW_KERNELS
        .into_iter()
        .flatten()
        .flatten()
        .chain([PREPARE_KERNEL, COUNT_KERNEL])
}

/// The row kernel of `pass` in `layout` for logits of `kind`.
fn row_kernel(layout: Layout, pass: Pass, kind: Kind) -> Result<&'static str> {
    let column = match kind {
        Kind::Float => 0,
        Kind::Half => 1,
        Kind::BFloat16 => 2,
        other => bail!("the fused kernels take f32, f16 or bf16, got {other:?}"),
    };
    Ok(ROW_KERNELS[layout as usize][pass as usize][column])
}

/// Multiprocessors the host emulator stands for: the grids it runs are
/// sized as for a device with this many.
#[cfg(feature = "testing")]
const EMULATED_MULTIPROCESSORS: u32 = 4;

/// Why the CUDA kernels cannot run on device `ordinal`, or `None` when they
/// can (compiled and loaded at the first ask, then remembered).
pub(crate) fn unavailable_reason(ordinal: usize) -> Option<String> {
    device::kernels(ordinal).err()
}

/// One kernel argument by value, as `cuLaunchKernel` takes it.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A tensor's address (0 for none) and the bytes from there that the
    /// kernel may touch; the emulator guards that range.
    Buffer {
        addr: u64,
        #[cfg_attr(not(feature = "testing"), allow(dead_code))]
        bytes: u64,
    },
    I64(i64),
    Params(SeesawParams),
}

impl Arg {
    pub(crate) fn of(t: &Tensor) -> Arg {
        Arg::Buffer {
            addr: t.data_ptr() as u64,
            bytes: extent_bytes(t),
        }
    }

    fn of_optional(t: Option<&Tensor>) -> Arg {
        t.map_or(Arg::Buffer { addr: 0, bytes: 0 }, Arg::of)
    }
}

/// Bytes from a tensor's first element to the end of its last. Strides are
/// non-negative: the tensors launched are made here or checked to be.
fn extent_bytes(t: &Tensor) -> u64 {
    if t.numel() == 0 {
        return 0;
    }
    let last: i64 = t.size().iter().zip(t.stride()).map(|(n, s)| (n - 1) * s).sum();
    (last as u64 + 1) * t.kind().elt_size_in_bytes() as u64
}

/// What runs a launch: the GPU through the driver, or (tests on machines
/// without one) the host emulator of `kernels/emulator.cpp` on CPU tensors.
enum Executor {
    Driver {
        kernels: std::sync::Arc<device::DeviceKernels>,
        ordinal: usize,
    },
    #[cfg(feature = "testing")]
    Emulator,
}

impl Executor {
    /// Row-kernel blocks the device keeps resident at once.
    fn resident_blocks(&self) -> u32 {
        let multiprocessors = match self {
            Executor::Driver { kernels, .. } => kernels.multiprocessors,
            #[cfg(feature = "testing")]
            Executor::Emulator => EMULATED_MULTIPROCESSORS,
        };
        multiprocessors * BLOCKS_PER_SM
    }

    /// The executor for tensors on `device`, the kernels compiled and loaded.
    fn of(device: Device) -> Result<Executor> {
        match device {
            Device::Cuda(ordinal) => Ok(Executor::Driver {
                kernels: device::kernels(ordinal).map_err(anyhow::Error::msg)?,
                ordinal,
            }),
            #[cfg(feature = "testing")]
            Device::Cpu if probe::emulating() => {
                device::emulated_kernels().map_err(anyhow::Error::msg)?;
                Ok(Executor::Emulator)
            }
            other => bail!("expected a CUDA tensor, got one on {other:?}"),
        }
    }

    /// Launches `kernel` on a 1-D grid, on libtorch's current stream for the
    /// device, so in order with the caller's libtorch work and with no host
    /// synchronization. The calling thread's CUDA context is the same after.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters in order and type, and
    /// every buffer is a live tensor on the executor's device that covers
    /// what the kernel's contract (kernels/seesaw.cu) lets it touch. Tensors
    /// freed after the call stay valid for the launch: libtorch's caching
    /// allocator reuses memory in stream order on the same current stream.
    unsafe fn launch(&self, kernel: &'static str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
        probe::launch();
        match self {
            Executor::Driver { kernels, ordinal } => {
                let _restore = ContextGuard::save()?;
                let stream = device::current_stream(kernels, *ordinal)?;
                let f = kernels.function(kernel)?;
                let mut launch = stream.launch_builder(f);
                for arg in args {
                    match arg {
                        Arg::Buffer { addr, .. } => launch.arg(addr),
                        Arg::I64(v) => launch.arg(v),
                        Arg::Params(p) => launch.arg(p),
                    };
                }
                let cfg = LaunchConfig {
                    grid_dim: (grid, 1, 1),
                    block_dim: (block, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch.launch(cfg).with_context(|| format!("launching {kernel}"))?;
                Ok(())
            }
            #[cfg(feature = "testing")]
            Executor::Emulator => super::emulation::launch(kernel, grid, block, args),
        }
    }
}

/// `seesaw_prepare`: one block checks the batch, counts it into `counts`
/// (int64, on the labels' device) when it is good, and writes the `[2, C]`
/// f32 class table (`log(max(n, 1))`, then `n^p`) and the `[STATE_LEN]`
/// int64 call state it returns; a bad batch's first problem goes to
/// `record`. With `histogram` (int64 zeros shaped like `counts`), a good
/// batch is counted there instead. One launch, no host read.
pub(crate) fn prepare_call(
    params: &SeesawParams,
    labels: &Tensor,
    weights: Option<&Tensor>,
    counts: &Tensor,
    histogram: Option<&Tensor>,
    record: &ErrorRecord,
) -> Result<(Tensor, Tensor)> {
    let device = labels.device();
    let executor = Executor::of(device)?;
    let labels = as_contiguous(labels, Kind::Int64)?;
    let weights = weights.map(|w| as_contiguous(w, Kind::Float)).transpose()?;
    let log_counts = Tensor::f_empty([2, params.classes as i64], (Kind::Float, device))?;
    let state = Tensor::f_empty([STATE_LEN as i64], (Kind::Int64, device))?;
    poison([&log_counts]);
    let params = SeesawParams {
        rows: labels.numel() as i64,
        ..*params
    };
    let args = [
        Arg::Params(params),
        Arg::of(&labels),
        Arg::of_optional(weights.as_ref()),
        Arg::of(counts),
        Arg::I64(counts.numel() as i64),
        Arg::of_optional(histogram),
        Arg::of(&log_counts),
        Arg::of(&state),
        record.arg(),
    ];
    // SAFETY: seesaw_prepare's parameters; live tensors of the lengths
    // passed (counts int64 and contiguous, checked by the caller), and the
    // kernel checks every label before it indexes with it.
    unsafe { executor.launch(PREPARE_KERNEL, 1, PREPARE_THREADS, &args)? };
    Ok((log_counts, state))
}

/// `counts[label] += step` for every label in range (int64 counts and labels
/// on the same device), with no host round trip; nothing when `state` (a
/// call state of `seesaw_prepare`) says the batch was bad, as then it was
/// not counted.
pub(crate) fn add_counts(counts: &Tensor, labels: &Tensor, step: i64, state: Option<&Tensor>) -> Result<()> {
    let n = labels.numel() as i64;
    if n == 0 {
        return Ok(());
    }
    let executor = Executor::of(labels.device())?;
    let labels = as_contiguous(labels, Kind::Int64)?;
    let blocks = (n as u64).div_ceil(COUNT_BLOCK as u64).min(1024) as u32;
    let args = [
        Arg::of(&labels),
        Arg::I64(n),
        Arg::I64(counts.numel() as i64),
        Arg::I64(step),
        Arg::of(counts),
        Arg::of_optional(state),
    ];
    // SAFETY: seesaw_count's parameters; live tensors of the lengths passed,
    // and the kernel skips out-of-range labels.
    unsafe { executor.launch(COUNT_KERNEL, blocks, COUNT_BLOCK, &args) }
}

/// A call's inputs in the layout the kernels take.
struct Launch {
    executor: Executor,
    scores: Tensor,
    labels: Tensor,
    weights: Option<Tensor>,
    log_counts: Tensor,
    state: Tensor,
    /// The call's parameters, with `rows` and `row_stride` of `scores`.
    params: SeesawParams,
    width: i64,
    layout: Layout,
}

impl Launch {
    fn of(call: &Call) -> Result<Launch> {
        let executor = Executor::of(call.scores.device())?;
        let scores = call.scores.detach();
        // Rows may be strided; columns must be adjacent.
        let scores = if scores.size()[1] > 1 && scores.stride()[1] != 1 {
            scores.f_contiguous()?
        } else {
            scores
        };
        let (n, width) = (scores.size()[0], scores.size()[1]);
        let params = SeesawParams {
            rows: n,
            row_stride: if n > 1 { scores.stride()[0] } else { width },
            ..call.params
        };
        let state = call
            .state
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the kernels need the call state of seesaw_prepare"))?;
        ensure!(
            call.log_counts.size() == [2, call.params.classes as i64],
            "the kernels take a [2, C] class table, got {:?}",
            call.log_counts.size()
        );
        let RowTensors {
            labels,
            weights,
            log_counts,
        } = RowTensors::of(call)?;
        Ok(Launch {
            scores,
            labels,
            weights,
            log_counts,
            state: state.shallow_clone(),
            layout: Layout::for_shape(n, params.classes as i64, executor.resident_blocks()),
            executor,
            params,
            width,
        })
    }

    fn n(&self) -> i64 {
        self.params.rows
    }

    fn device(&self) -> Device {
        self.scores.device()
    }

    /// The row kernels' grid: the blocks the rows need, at most those the
    /// device keeps resident (the blocks then loop over the rows).
    fn blocks(&self) -> u32 {
        let needed = (self.n() as u64).div_ceil(self.layout.rows_per_block() as u64);
        needed.clamp(1, self.executor.resident_blocks() as u64) as u32
    }

    /// Launches `pass` over every row with the parameter block and then
    /// `args`; nothing for zero rows.
    fn rows(&self, pass: Pass, args: &[Arg]) -> Result<()> {
        if self.n() == 0 {
            return Ok(());
        }
        let kernel = row_kernel(self.layout, pass, self.scores.kind())?;
        let args: Vec<Arg> = [Arg::Params(self.params)]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        // SAFETY: the argument lists below follow the kernels' signatures,
        // and every buffer is a tensor of this call with the shape the
        // kernels' contract names (kernels/seesaw.cu).
        unsafe { self.executor.launch(kernel, self.blocks(), ROW_BLOCK_THREADS, &args) }
    }

    /// The outputs of a loss pass: per-row values, the blocks' partial sums
    /// and, for a reduction, the reduced parts (0 for zero rows, as a sum
    /// over nothing is).
    fn loss_outputs(&self) -> Result<LossOutputs> {
        let device = self.device();
        let detection = self.params.detection != 0;
        let rows = LossRows::empty(self.n(), detection, device)?;
        let reduced = self.params.reduction() != Reduction::None;
        let scalar = || {
            if self.n() == 0 {
                Tensor::f_zeros([], (Kind::Float, device))
            } else {
                Tensor::f_empty([], (Kind::Float, device))
            }
        };
        let outputs = LossOutputs {
            partials: Tensor::f_empty([2 * self.blocks() as i64], (Kind::Float, device))?,
            classes: reduced.then(scalar).transpose()?,
            objectness: (reduced && detection).then(scalar).transpose()?,
            rows,
        };
        // With zero rows no kernel runs: the reduced parts stay 0.
        if self.n() > 0 {
            poison(
                [&outputs.rows.class_loss]
                    .into_iter()
                    .chain(outputs.rows.objectness_loss.as_ref())
                    .chain(outputs.classes.as_ref())
                    .chain(outputs.objectness.as_ref()),
            );
        }
        Ok(outputs)
    }

    fn grad(&self) -> Result<Tensor> {
        let grad = Tensor::f_empty([self.n(), self.width], (self.scores.kind(), self.device()))?;
        poison([&grad]);
        Ok(grad)
    }
}

/// What a loss pass writes.
struct LossOutputs {
    rows: LossRows,
    partials: Tensor,
    classes: Option<Tensor>,
    objectness: Option<Tensor>,
}

impl LossOutputs {
    /// `row_class, row_obj, [stats,] partials, out_class, out_obj` as the
    /// kernels take them.
    fn args(&self, stats: Option<&Tensor>) -> Vec<Arg> {
        [
            Arg::of(&self.rows.class_loss),
            Arg::of_optional(self.rows.objectness_loss.as_ref()),
        ]
        .into_iter()
        .chain(stats.map(Arg::of))
        .chain([
            Arg::of(&self.partials),
            Arg::of_optional(self.classes.as_ref()),
            Arg::of_optional(self.objectness.as_ref()),
        ])
        .collect()
    }

    /// The parts the call returns: reduced, or per row.
    fn parts(self) -> (Tensor, Option<Tensor>) {
        match self.classes {
            Some(classes) => (classes, self.objectness),
            None => (self.rows.class_loss, self.rows.objectness_loss),
        }
    }
}

/// Test aid ([`crate::testing::poison_outputs`]): an element a kernel fails
/// to write stays NaN.
fn poison<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) {
    if probe::poisoning() {
        for t in tensors {
            let _ = t.shallow_clone().fill_(f64::NAN);
        }
    }
}

/// The loss pass over every row: the parts, reduced as the call asks, and
/// the `[N, ROW_STATS]` row stats.
pub(crate) fn forward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let out = l.loss_outputs()?;
    let stats = Tensor::f_empty([l.n(), ROW_STATS as i64], (Kind::Float, l.device()))?;
    poison([&stats]);
    let args: Vec<Arg> = [
        Arg::of(&l.scores),
        Arg::of(&l.labels),
        Arg::of_optional(l.weights.as_ref()),
        Arg::of(&l.log_counts),
        Arg::of(&l.state),
    ]
    .into_iter()
    .chain(out.args(Some(&stats)))
    .collect();
    l.rows(Pass::Forward, &args)?;
    let (classes, objectness) = out.parts();
    Ok((classes, objectness, stats))
}

/// The arguments seesaw_backward and seesaw_forward_backward start with (after the
/// parameter block): the logits, the gradient to write, labels, weights, log
/// counts and the call state.
fn gradient_inputs(l: &Launch, grad: &Tensor) -> [Arg; 6] {
    [
        Arg::of(&l.scores),
        Arg::of(grad),
        Arg::of(&l.labels),
        Arg::of_optional(l.weights.as_ref()),
        Arg::of(&l.log_counts),
        Arg::of(&l.state),
    ]
}

/// The gradient pass over every row, from the loss pass's stats, times the
/// upstream gradients (read on the device).
pub(crate) fn backward(call: &Call, stats: &Tensor, upstream: &Upstream) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let grad = l.grad()?;
    let stats = as_contiguous(stats, Kind::Float)?;
    if stats.size() != [l.n(), ROW_STATS as i64] {
        bail!(
            "saved row stats have shape {:?}, expected [{}, {ROW_STATS}]",
            stats.size(),
            l.n()
        );
    }
    let up = upstream.on(l.device())?;
    let multiplier = |t: &Option<Tensor>| match t {
        Some(t) => [Arg::of(t), Arg::I64(Upstream::stride(t) as i64)],
        None => [Arg::of_optional(None), Arg::I64(0)],
    };
    let args: Vec<Arg> = gradient_inputs(&l, &grad)
        .into_iter()
        .chain([Arg::of(&stats)])
        .chain(multiplier(&up.classes))
        .chain(multiplier(&up.objectness))
        .collect();
    l.rows(Pass::Backward, &args)?;
    Ok(grad)
}

/// Both passes in one launch: the parts, reduced as the call asks, and the
/// gradient of their total.
pub(crate) fn forward_backward(call: &Call) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let out = l.loss_outputs()?;
    let grad = l.grad()?;
    let args: Vec<Arg> = gradient_inputs(&l, &grad).into_iter().chain(out.args(None)).collect();
    l.rows(Pass::ForwardBackward, &args)?;
    let (classes, objectness) = out.parts();
    Ok((classes, objectness, grad))
}
