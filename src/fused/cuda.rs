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
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};
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

/// The three row kernels of one storage kind.
struct RowKernels {
    forward: CudaFunction,
    backward: CudaFunction,
    fused: CudaFunction,
}

/// The loaded module of one device.
struct DeviceKernels {
    stream: Arc<CudaStream>,
    f32: RowKernels,
    f16: RowKernels,
    bf16: RowKernels,
    count: CudaFunction,
}

impl DeviceKernels {
    fn for_kind(&self, kind: Kind) -> Result<&RowKernels> {
        Ok(match kind {
            Kind::Float => &self.f32,
            Kind::Half => &self.f16,
            Kind::BFloat16 => &self.bf16,
            other => bail!("the fused kernels take f32, f16 or bf16, got {other:?}"),
        })
    }
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
    let load = |name: &str| module.load_function(name).with_context(|| format!("kernel {name}"));
    let row_kernels = |suffix: &str| -> Result<RowKernels> {
        Ok(RowKernels {
            forward: load(&format!("seesaw_forward_{suffix}"))?,
            backward: load(&format!("seesaw_backward_{suffix}"))?,
            fused: load(&format!("seesaw_fused_{suffix}"))?,
        })
    };
    let k = Arc::new(DeviceKernels {
        stream: ctx.default_stream(),
        f32: row_kernels("f32")?,
        f16: row_kernels("f16")?,
        bf16: row_kernels("bf16")?,
        count: load("seesaw_count")?,
    });
    cache.insert(ordinal, k.clone());
    Ok(k)
}

fn ordinal(device: Device) -> Result<usize> {
    match device {
        Device::Cuda(i) => Ok(i),
        other => bail!("expected a CUDA tensor, got one on {other:?}"),
    }
}

/// Compiles and loads the kernels for `device` now, so that a failure is
/// reported before the counts change.
pub(crate) fn prepare(device: Device) -> Result<()> {
    kernels(ordinal(device)?).map(|_| ())
}

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

/// `counts[label] += step` for every label in range (int64 counts and labels
/// on the same CUDA device), with no host round trip.
pub(crate) fn add_counts(counts: &Tensor, labels: &Tensor, step: i64) -> Result<()> {
    let n = labels.numel() as i64;
    if n == 0 {
        return Ok(());
    }
    let k = kernels(ordinal(labels.device())?)?;
    let labels = labels.contiguous();
    let (labels_ptr, counts_ptr, n_counters) = (ptr(&labels), ptr(counts), counts.numel() as i64);
    let blocks = (n as u64).div_ceil(COUNT_BLOCK as u64).min(1024) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (COUNT_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = k.stream.launch_builder(&k.count);
    launch
        .arg(&labels_ptr)
        .arg(&n)
        .arg(&n_counters)
        .arg(&step)
        .arg(&counts_ptr);
    // SAFETY: the pointers are live device tensors of the lengths passed;
    // the kernel skips out-of-range labels.
    unsafe { launch.launch(cfg) }.context("launching seesaw_count")?;
    Ok(())
}

/// A call's device inputs in the layout the kernels take.
struct Launch {
    k: Arc<DeviceKernels>,
    /// Device addresses of the tensors below, as the kernels take them
    /// (0 for absent weights).
    pointers: Pointers,
    scores: Tensor,
    row_stride: i64,
    // Alive as long as `pointers` is used.
    _labels: Tensor,
    _weights: Option<Tensor>,
    _log_counts: Tensor,
    n: i64,
    width: i64,
    classes: i32,
    detection: i32,
    params: RowParams,
    loss_weight: f32,
}

struct Pointers {
    scores: u64,
    labels: u64,
    weights: u64,
    log_counts: u64,
}

impl Launch {
    fn of(call: &Call) -> Result<Launch> {
        let device = call.scores.device();
        let k = kernels(ordinal(device)?)?;
        let scores = call.scores.detach();
        // Rows may be strided; columns must be adjacent.
        let scores = if scores.size()[1] > 1 && scores.stride()[1] != 1 {
            scores.contiguous()
        } else {
            scores
        };
        let (n, width) = (scores.size()[0], scores.size()[1]);
        let labels = call.labels.contiguous();
        let weights = call.weights.as_ref().map(|w| w.to_kind(Kind::Float).contiguous());
        let log_counts = call.log_counts.to_kind(Kind::Float).contiguous();
        Ok(Launch {
            k,
            pointers: Pointers {
                scores: ptr(&scores),
                labels: ptr(&labels),
                weights: weights.as_ref().map_or(0, ptr),
                log_counts: ptr(&log_counts),
            },
            row_stride: if n > 1 { scores.stride()[0] } else { width },
            scores,
            _labels: labels,
            _weights: weights,
            _log_counts: log_counts,
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

    fn config(&self) -> Result<LaunchConfig> {
        let blocks =
            u32::try_from((self.n as u64).div_ceil(ROWS_PER_BLOCK as u64)).context("too many rows for one launch")?;
        Ok(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        })
    }

    fn kernels(&self) -> Result<&RowKernels> {
        self.k.for_kind(self.scores.kind())
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

/// Device pointers and strides of the upstream multipliers (null: unused).
struct DeviceUpstream {
    _owners: Upstream,
    classes: (u64, i64),
    objectness: (u64, i64),
}

fn device_upstream(upstream: &Upstream, device: Device) -> DeviceUpstream {
    let placed = upstream.on(device);
    let args = |t: &Option<Tensor>| t.as_ref().map_or((0, 0), |t| (ptr(t), Upstream::stride(t) as i64));
    DeviceUpstream {
        classes: args(&placed.classes),
        objectness: args(&placed.objectness),
        _owners: placed,
    }
}

/// The arguments seesaw_backward and seesaw_fused start with: the logits,
/// the gradient to write, labels, weights and log counts.
fn input_args<'a>(launch: &mut LaunchArgs<'a>, l: &'a Launch, grad: &'a u64) {
    let p = &l.pointers;
    launch
        .arg(&p.scores)
        .arg(&l.row_stride)
        .arg(grad)
        .arg(&p.labels)
        .arg(&p.weights)
        .arg(&p.log_counts);
}

/// The arguments seesaw_backward and seesaw_fused end with: the upstream
/// multipliers, the shape and the call's constants.
fn gradient_args<'a>(launch: &mut LaunchArgs<'a>, l: &'a Launch, up: &'a DeviceUpstream) {
    launch
        .arg(&up.classes.0)
        .arg(&up.classes.1)
        .arg(&up.objectness.0)
        .arg(&up.objectness.1)
        .arg(&l.n)
        .arg(&l.classes)
        .arg(&l.detection)
        .arg(&l.params.p)
        .arg(&l.params.q)
        .arg(&l.params.log_eps)
        .arg(&l.loss_weight);
}

// SAFETY (for the launches below): every pointer is a live device tensor on
// this device with the shape the kernel's contract names (kernels/seesaw.cu);
// the tensors outlive the launch in stream order because libtorch's caching
// allocator reuses memory only in stream order on the same (null) stream.

/// The loss pass over every row: unweighted losses and `[N, 2]` row stats.
pub(crate) fn forward(call: &Call) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let rows = l.loss_rows();
    let stats = Tensor::empty([l.n, 2], (Kind::Float, l.device()));
    poison([&stats]);
    if l.n > 0 {
        let p = &l.pointers;
        let (class_loss, obj_loss, stats_ptr) = (
            ptr(&rows.class_loss),
            rows.objectness_loss.as_ref().map_or(0, ptr),
            ptr(&stats),
        );
        let mut launch = l.k.stream.launch_builder(&l.kernels()?.forward);
        launch
            .arg(&p.scores)
            .arg(&l.row_stride)
            .arg(&p.labels)
            .arg(&p.log_counts)
            .arg(&class_loss)
            .arg(&obj_loss)
            .arg(&stats_ptr)
            .arg(&l.n)
            .arg(&l.classes)
            .arg(&l.detection)
            .arg(&l.params.p)
            .arg(&l.params.q)
            .arg(&l.params.log_eps);
        // SAFETY: see above.
        unsafe { launch.launch(l.config()?) }.context("launching seesaw_forward")?;
    }
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
    let up = device_upstream(upstream, l.device());
    if l.n > 0 {
        let (grad_ptr, stats_ptr) = (ptr(&grad), ptr(&stats));
        let mut launch = l.k.stream.launch_builder(&l.kernels()?.backward);
        input_args(&mut launch, &l, &grad_ptr);
        launch.arg(&stats_ptr);
        gradient_args(&mut launch, &l, &up);
        // SAFETY: see above.
        unsafe { launch.launch(l.config()?) }.context("launching seesaw_backward")?;
    }
    Ok(grad)
}

/// Both passes in one launch: unweighted losses and the gradient scaled by
/// `upstream`.
pub(crate) fn forward_backward(call: &Call, upstream: &Upstream) -> Result<(LossRows, Tensor)> {
    let _guard = tch::no_grad_guard();
    let l = Launch::of(call)?;
    let rows = l.loss_rows();
    let grad = l.grad();
    let up = device_upstream(upstream, l.device());
    if l.n > 0 {
        let grad_ptr = ptr(&grad);
        let (class_loss, obj_loss) = (ptr(&rows.class_loss), rows.objectness_loss.as_ref().map_or(0, ptr));
        let mut launch = l.k.stream.launch_builder(&l.kernels()?.fused);
        input_args(&mut launch, &l, &grad_ptr);
        launch.arg(&class_loss).arg(&obj_loss);
        gradient_args(&mut launch, &l, &up);
        // SAFETY: see above.
        unsafe { launch.launch(l.config()?) }.context("launching seesaw_fused")?;
    }
    Ok((rows, grad))
}
