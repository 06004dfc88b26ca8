//! CUDA plumbing for `kernels/seesaw.cu`: NVRTC compilation at first use for
//! the device's compute capability, a per-device module cache, and launches on
//! the stream libtorch uses.
//!
//! cudarc panics when libcuda or libnvrtc cannot be loaded, so nothing here
//! touches it before `unavailable_reason` has said yes (libtorch reports
//! CUDA, and both libraries load).
//!
//! Streams: tch gives no access to libtorch's current stream, which is the
//! legacy default stream unless a caller changed it through libtorch's C++
//! API; kernels are launched on that null stream, so they are ordered with
//! libtorch's work with no host synchronization.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use once_cell::sync::Lazy;
use tch::{Device, Kind, Tensor};

use super::{LossRows, Upstream};
use crate::call::Call;
use crate::config::Head;
use crate::math::RowParams;

/// The kernel source, compiled at run time.
pub const KERNEL_SOURCE: &str = include_str!("../../kernels/seesaw.cu");

/// Rows per thread block: one warp per row (`WARPS_PER_BLOCK` in the kernel).
const ROWS_PER_BLOCK: u32 = 8;
const COUNT_BLOCK: u32 = 256;

/// `SEESAW_POISON_OUTPUTS=1` fills the kernel's outputs with NaN before each
/// launch, so that tests catch an element the kernel does not write.
static POISON_OUTPUTS: Lazy<bool> = Lazy::new(|| std::env::var("SEESAW_POISON_OUTPUTS").is_ok_and(|v| v == "1"));

/// Whether NVRTC's library can be loaded (no GPU needed).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Why the CUDA kernel cannot run here, or `None` when it can.
pub(crate) fn unavailable_reason() -> Option<String> {
    if !tch::Cuda::is_available() {
        return Some("libtorch reports no CUDA device".into());
    }
    // SAFETY: only tries to dlopen the library under its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("the CUDA driver library (libcuda.so) cannot be loaded".into());
    }
    if !nvrtc_available() {
        return Some("NVRTC (libnvrtc.so.13) cannot be loaded; see the README's linking notes".into());
    }
    None
}

/// Compiles the kernel source to PTX for `compute_{arch}` (for example 90),
/// returning NVRTC's log in the error. Needs no GPU.
///
/// ```no_run
/// let ptx = seesaw_loss::cuda::compile_ptx(90).unwrap();
/// assert!(ptx.to_src().contains("seesaw_forward_f32"));
/// ```
pub fn compile_ptx(arch: u32) -> Result<Ptx> {
    if !nvrtc_available() {
        bail!("NVRTC (libnvrtc.so.13) cannot be loaded");
    }
    // SAFETY: loads the library through cudarc, which was just found present.
    let _ = unsafe { cudarc::nvrtc::sys::culib() };
    crate::link::preload_nvrtc_builtins()?;
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{arch}"), "--std=c++17".into()],
        name: Some("seesaw.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(KERNEL_SOURCE, options).map_err(|e| match e {
        CompileError::CompileError { log, options, .. } => {
            anyhow!(
                "NVRTC failed to compile kernels/seesaw.cu with {options:?}:\n{}",
                log.to_string_lossy()
            )
        }
        other => anyhow!("NVRTC failed on kernels/seesaw.cu: {other:?}"),
    })
}

/// Every kernel of the module, by name.
const KERNEL_NAMES: [&str; 10] = [
    "seesaw_forward_f32",
    "seesaw_backward_f32",
    "seesaw_fused_f32",
    "seesaw_forward_f16",
    "seesaw_backward_f16",
    "seesaw_fused_f16",
    "seesaw_forward_bf16",
    "seesaw_backward_bf16",
    "seesaw_fused_bf16",
    "seesaw_count",
];

/// The row kernels: the loss pass, the gradient pass, both.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
    Fused,
}

/// The row kernel of `pass` for logits of `kind`.
fn row_kernel(pass: Pass, kind: Kind) -> Result<&'static str> {
    Ok(match (pass, kind) {
        (Pass::Forward, Kind::Float) => "seesaw_forward_f32",
        (Pass::Backward, Kind::Float) => "seesaw_backward_f32",
        (Pass::Fused, Kind::Float) => "seesaw_fused_f32",
        (Pass::Forward, Kind::Half) => "seesaw_forward_f16",
        (Pass::Backward, Kind::Half) => "seesaw_backward_f16",
        (Pass::Fused, Kind::Half) => "seesaw_fused_f16",
        (Pass::Forward, Kind::BFloat16) => "seesaw_forward_bf16",
        (Pass::Backward, Kind::BFloat16) => "seesaw_backward_bf16",
        (Pass::Fused, Kind::BFloat16) => "seesaw_fused_bf16",
        (_, other) => bail!("the fused kernels take f32, f16 or bf16, got {other:?}"),
    })
}

/// The loaded module of one device.
struct DeviceKernels {
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
}

// SAFETY: cudarc's handles are plain driver handles used from any thread;
// launches bind the context to the calling thread first.
unsafe impl Send for DeviceKernels {}
unsafe impl Sync for DeviceKernels {}

static MODULES: Lazy<Mutex<HashMap<usize, Arc<DeviceKernels>>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// The device's kernels, compiled and loaded at first use and cached.
fn kernels(ordinal: usize) -> Result<Arc<DeviceKernels>> {
    let mut cache = MODULES
        .lock()
        .map_err(|_| anyhow!("the kernel cache lock is poisoned"))?;
    if let Some(k) = cache.get(&ordinal) {
        return Ok(k.clone());
    }
    let ctx = CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
    let (major, minor) = ctx.compute_capability()?;
    let ptx = compile_ptx((major * 10 + minor) as u32)?;
    let module = ctx.load_module(ptx).context("loading the seesaw kernels")?;
    let mut functions = HashMap::new();
    for name in KERNEL_NAMES {
        let f = module.load_function(name).with_context(|| format!("kernel {name}"))?;
        functions.insert(name, f);
    }
    let k = Arc::new(DeviceKernels {
        stream: ctx.default_stream(),
        functions,
    });
    cache.insert(ordinal, k.clone());
    Ok(k)
}

/// One kernel argument by value, as `cuLaunchKernel` takes it.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A tensor's address (0 for none) and the bytes from there that the
    /// kernel may touch; the emulator guards that range.
    Buffer {
        addr: u64,
        #[cfg_attr(not(feature = "kernel-emulation"), allow(dead_code))]
        bytes: u64,
    },
    I64(i64),
    I32(i32),
    F32(f32),
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
    Driver(Arc<DeviceKernels>),
    #[cfg(feature = "kernel-emulation")]
    Emulator,
}

impl Executor {
    /// The executor for tensors on `device`, the kernels compiled and loaded.
    fn of(device: Device) -> Result<Executor> {
        match device {
            Device::Cuda(ordinal) => Ok(Executor::Driver(kernels(ordinal)?)),
            #[cfg(feature = "kernel-emulation")]
            Device::Cpu if super::emulation::enabled() => Ok(Executor::Emulator),
            other => bail!("expected a CUDA tensor, got one on {other:?}"),
        }
    }

    /// Launches `kernel` on a 1-D grid, in stream order with libtorch's work.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters in order and type, and
    /// every buffer is a live tensor on the executor's device that covers
    /// what the kernel's contract (kernels/seesaw.cu) lets it touch. Tensors
    /// freed after the call stay valid for the launch: libtorch's caching
    /// allocator reuses memory in stream order on the same (null) stream.
    unsafe fn launch(&self, kernel: &'static str, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
        match self {
            Executor::Driver(k) => {
                let f = k
                    .functions
                    .get(kernel)
                    .ok_or_else(|| anyhow!("no kernel named {kernel}"))?;
                let mut launch = k.stream.launch_builder(f);
                for arg in args {
                    match arg {
                        Arg::Buffer { addr, .. } => launch.arg(addr),
                        Arg::I64(v) => launch.arg(v),
                        Arg::I32(v) => launch.arg(v),
                        Arg::F32(v) => launch.arg(v),
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
            #[cfg(feature = "kernel-emulation")]
            Executor::Emulator => super::emulation::launch(kernel, grid, block, args),
        }
    }
}

/// Compiles and loads the kernels for `device` now, so that a failure is
/// reported before the counts change.
pub(crate) fn prepare(device: Device) -> Result<()> {
    Executor::of(device).map(|_| ())
}

/// `counts[label] += step` for every label in range (int64 counts and labels
/// on the same CUDA device), with no host round trip.
pub(crate) fn add_counts(counts: &Tensor, labels: &Tensor, step: i64) -> Result<()> {
    let n = labels.numel() as i64;
    if n == 0 {
        return Ok(());
    }
    let executor = Executor::of(labels.device())?;
    let labels = labels.contiguous();
    let blocks = (n as u64).div_ceil(COUNT_BLOCK as u64).min(1024) as u32;
    let args = [
        Arg::of(&labels),
        Arg::I64(n),
        Arg::I64(counts.numel() as i64),
        Arg::I64(step),
        Arg::of(counts),
    ];
    // SAFETY: seesaw_count's parameters; live tensors of the lengths passed,
    // and the kernel skips out-of-range labels.
    unsafe { executor.launch("seesaw_count", blocks, COUNT_BLOCK, &args) }
}

/// A call's inputs in the layout the kernels take.
struct Launch {
    executor: Executor,
    scores: Tensor,
    row_stride: i64,
    labels: Tensor,
    weights: Option<Tensor>,
    log_counts: Tensor,
    n: i64,
    width: i64,
    classes: i32,
    detection: i32,
    params: RowParams,
    loss_weight: f32,
}

impl Launch {
    fn of(call: &Call) -> Result<Launch> {
        let executor = Executor::of(call.scores.device())?;
        let scores = call.scores.detach();
        // Rows may be strided; columns must be adjacent.
        let scores = if scores.size()[1] > 1 && scores.stride()[1] != 1 {
            scores.contiguous()
        } else {
            scores
        };
        let (n, width) = (scores.size()[0], scores.size()[1]);
        Ok(Launch {
            executor,
            row_stride: if n > 1 { scores.stride()[0] } else { width },
            scores,
            labels: call.labels.contiguous(),
            weights: call.weights.as_ref().map(|w| w.to_kind(Kind::Float).contiguous()),
            log_counts: call.log_counts.to_kind(Kind::Float).contiguous(),
            n,
            width,
            classes: call.num_classes as i32,
            detection: (call.head == Head::Detection) as i32,
            params: RowParams::of(call),
            loss_weight: call.loss_weight as f32,
        })
    }

    fn device(&self) -> Device {
        self.scores.device()
    }

    /// Launches `pass` over every row (one warp per row), with `args` the
    /// kernel's full argument list; nothing for zero rows.
    fn rows(&self, pass: Pass, args: &[Arg]) -> Result<()> {
        if self.n == 0 {
            return Ok(());
        }
        let blocks =
            u32::try_from((self.n as u64).div_ceil(ROWS_PER_BLOCK as u64)).context("too many rows for one launch")?;
        let kernel = row_kernel(pass, self.scores.kind())?;
        // SAFETY: the argument lists below follow the kernels' signatures,
        // and every buffer is a tensor of this call with the shape the
        // kernels' contract names (kernels/seesaw.cu).
        unsafe { self.executor.launch(kernel, blocks, 32 * ROWS_PER_BLOCK, args) }
    }

    fn loss_rows(&self) -> LossRows {
        let device = self.device();
        let rows = LossRows {
            class_loss: Tensor::empty([self.n], (Kind::Float, device)),
            objectness_loss: (self.detection != 0).then(|| Tensor::empty([self.n], (Kind::Float, device))),
        };
        poison([&rows.class_loss].into_iter().chain(rows.objectness_loss.as_ref()));
        rows
    }

    fn grad(&self) -> Tensor {
        let grad = Tensor::empty([self.n, self.width], (self.scores.kind(), self.device()));
        poison([&grad]);
        grad
    }

    /// The arguments seesaw_backward and seesaw_fused start with: the
    /// logits, the gradient to write, labels, weights and log counts.
    fn input_args(&self, grad: &Tensor) -> [Arg; 6] {
        [
            Arg::of(&self.scores),
            Arg::I64(self.row_stride),
            Arg::of(grad),
            Arg::of(&self.labels),
            Arg::of_optional(self.weights.as_ref()),
            Arg::of(&self.log_counts),
        ]
    }

    /// The arguments every row kernel ends with (seesaw_backward and
    /// seesaw_fused add `loss_weight`): the shape and the call's constants.
    fn shape_args(&self) -> [Arg; 6] {
        [
            Arg::I64(self.n),
            Arg::I32(self.classes),
            Arg::I32(self.detection),
            Arg::F32(self.params.p),
            Arg::F32(self.params.q),
            Arg::F32(self.params.log_eps),
        ]
    }

    /// The arguments seesaw_backward and seesaw_fused end with: the upstream
    /// multipliers, the shape and constants, and `loss_weight`.
    fn gradient_args(&self, up: &Upstream) -> Vec<Arg> {
        let multiplier = |t: &Option<Tensor>| match t {
            Some(t) => [Arg::of(t), Arg::I64(Upstream::stride(t) as i64)],
            None => [Arg::of_optional(None), Arg::I64(0)],
        };
        multiplier(&up.classes)
            .into_iter()
            .chain(multiplier(&up.objectness))
            .chain(self.shape_args())
            .chain([Arg::F32(self.loss_weight)])
            .collect()
    }
}

/// Test aid (`SEESAW_POISON_OUTPUTS=1`): an element a kernel fails to write
/// stays NaN.
fn poison<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) {
    if *POISON_OUTPUTS {
        for t in tensors {
            let _ = t.shallow_clone().fill_(f64::NAN);
        }
    }
}

/// The loss pass over every row: unweighted losses and `[N, 2]` row stats.
pub(crate) fn forward(call: &Call) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let rows = l.loss_rows();
    let stats = Tensor::empty([l.n, 2], (Kind::Float, l.device()));
    poison([&stats]);
    let args: Vec<Arg> = [
        Arg::of(&l.scores),
        Arg::I64(l.row_stride),
        Arg::of(&l.labels),
        Arg::of(&l.log_counts),
        Arg::of(&rows.class_loss),
        Arg::of_optional(rows.objectness_loss.as_ref()),
        Arg::of(&stats),
    ]
    .into_iter()
    .chain(l.shape_args())
    .collect();
    l.rows(Pass::Forward, &args)?;
    Ok((rows, stats))
}

/// The gradient pass over every row, from the loss pass's stats.
pub(crate) fn backward(call: &Call, stats: &Tensor, upstream: &Upstream) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let grad = l.grad();
    let stats = stats.to_kind(Kind::Float).contiguous();
    if stats.size() != [l.n, 2] {
        bail!("saved row stats have shape {:?}, expected [{}, 2]", stats.size(), l.n);
    }
    let up = upstream.on(l.device());
    let args: Vec<Arg> = l
        .input_args(&grad)
        .into_iter()
        .chain([Arg::of(&stats)])
        .chain(l.gradient_args(&up))
        .collect();
    l.rows(Pass::Backward, &args)?;
    Ok(grad)
}

/// Both passes in one launch: unweighted losses and the gradient scaled by
/// `upstream`.
pub(crate) fn forward_backward(call: &Call, upstream: &Upstream) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let rows = l.loss_rows();
    let grad = l.grad();
    let up = upstream.on(l.device());
    let args: Vec<Arg> = l
        .input_args(&grad)
        .into_iter()
        .chain([
            Arg::of(&rows.class_loss),
            Arg::of_optional(rows.objectness_loss.as_ref()),
        ])
        .chain(l.gradient_args(&up))
        .collect();
    l.rows(Pass::Fused, &args)?;
    Ok((rows, grad))
}
