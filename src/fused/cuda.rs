//! CUDA plumbing for `kernels/seesaw.cu`: NVRTC compilation at first use for
//! the device's compute capability, a per-device module cache, and launches on
//! the stream libtorch uses.
//!
//! cudarc panics when libcuda or libnvrtc cannot be loaded, so nothing here
//! touches it before [`unavailable_reason`] has said yes (libtorch reports
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

use super::RowOutputs;
use crate::call::Call;
use crate::config::Head;

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
/// assert!(ptx.to_src().contains("seesaw_fused_f32"));
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

/// The loaded module of one device.
struct DeviceKernels {
    stream: Arc<CudaStream>,
    fused_f32: CudaFunction,
    fused_f16: CudaFunction,
    fused_bf16: CudaFunction,
    count: CudaFunction,
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
    let k = Arc::new(DeviceKernels {
        stream: ctx.default_stream(),
        fused_f32: load("seesaw_fused_f32")?,
        fused_f16: load("seesaw_fused_f16")?,
        fused_bf16: load("seesaw_fused_bf16")?,
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

/// `counts[label] += 1` for every label (int64 counts and labels on the same
/// CUDA device), with no host round trip.
pub(crate) fn add_counts(counts: &Tensor, labels: &Tensor) -> Result<()> {
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
    launch.arg(&labels_ptr).arg(&n).arg(&n_counters).arg(&counts_ptr);
    // SAFETY: the pointers are live device tensors of the lengths passed;
    // the kernel skips out-of-range labels.
    unsafe { launch.launch(cfg) }.context("launching seesaw_count")?;
    Ok(())
}

/// Runs the fused kernel over every row of the call.
pub(crate) fn rows(call: &Call) -> Result<RowOutputs> {
    let _guard = tch::no_grad_guard();
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
    let detection = call.head == Head::Detection;
    let labels = call.labels.contiguous();
    let weights = call.weights.as_ref().map(|w| w.to_kind(Kind::Float).contiguous());
    let log_counts = call.log_counts.to_kind(Kind::Float).contiguous();
    let grad = Tensor::empty([n, width], (scores.kind(), device));
    let class_loss = Tensor::empty([n], (Kind::Float, device));
    let obj_loss = detection.then(|| Tensor::empty([n], (Kind::Float, device)));
    if *POISON_OUTPUTS {
        // Test aid: an element the kernel fails to write stays NaN.
        for t in [&grad, &class_loss].into_iter().chain(obj_loss.as_ref()) {
            let _ = t.shallow_clone().fill_(f64::NAN);
        }
    }
    if n > 0 {
        let function = match scores.kind() {
            Kind::Float => &k.fused_f32,
            Kind::Half => &k.fused_f16,
            Kind::BFloat16 => &k.fused_bf16,
            other => bail!("the fused kernel takes f32, f16 or bf16, got {other:?}"),
        };
        let row_stride = if n > 1 { scores.stride()[0] } else { width };
        let args = (
            ptr(&scores),
            ptr(&grad),
            ptr(&labels),
            weights.as_ref().map_or(0, ptr),
            ptr(&log_counts),
            ptr(&class_loss),
            obj_loss.as_ref().map_or(0, ptr),
        );
        let (c, det) = (call.num_classes as i32, detection as i32);
        let (p, q, log_eps, lw) = (
            call.p as f32,
            call.q as f32,
            (call.eps as f32).ln(),
            call.loss_weight as f32,
        );
        let blocks =
            u32::try_from((n as u64).div_ceil(ROWS_PER_BLOCK as u64)).context("too many rows for one launch")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = k.stream.launch_builder(function);
        launch
            .arg(&args.0)
            .arg(&row_stride)
            .arg(&args.1)
            .arg(&args.2)
            .arg(&args.3)
            .arg(&args.4)
            .arg(&args.5)
            .arg(&args.6)
            .arg(&n)
            .arg(&c)
            .arg(&det)
            .arg(&p)
            .arg(&q)
            .arg(&log_eps)
            .arg(&lw);
        // SAFETY: every pointer is a live device tensor on this device with the
        // shape the kernel's contract names; the tensors outlive the launch's
        // stream order because libtorch's allocator reuses memory only in
        // stream order on the same (null) stream.
        unsafe { launch.launch(cfg) }.context("launching seesaw_fused")?;
    }
    Ok(RowOutputs {
        class_loss: class_loss.to_kind(call.compute_kind),
        objectness_loss: obj_loss.map(|l| l.to_kind(call.compute_kind)),
        grad,
    })
}
