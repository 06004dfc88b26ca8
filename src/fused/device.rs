//! One CUDA device as the kernels see it: the module, compiled and loaded
//! once per process and device (a failure is kept too, so it is not retried
//! on every call), libtorch's current stream to launch on, and a guard that
//! leaves the calling thread's CUDA context as it found it.
//!
//! cudarc panics when libcuda cannot be loaded, so nothing here touches it
//! before libtorch has reported CUDA and the driver library was found.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{result as driver, sys as driver_sys, CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use super::compile::{self, ImageFormat};

/// The loaded kernels of one device.
pub(crate) struct DeviceKernels {
    pub(crate) context: Arc<CudaContext>,
    functions: HashMap<&'static str, CudaFunction>,
    /// The device's streaming multiprocessors, which size the row kernels'
    /// grids.
    pub(crate) multiprocessors: u32,
}

// SAFETY: cudarc's handles are plain driver handles used from any thread;
// launches bind the context to the calling thread first (and restore the
// thread's own afterwards, `ContextGuard`).
unsafe impl Send for DeviceKernels {}
unsafe impl Sync for DeviceKernels {}

impl DeviceKernels {
    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| anyhow!("no kernel named {name}"))
    }
}

/// A device's kernels, or why they could not be had.
pub(crate) type Loaded = std::result::Result<Arc<DeviceKernels>, String>;

/// The outcome of getting the kernels for one target, remembered for the
/// life of the process: the same `Ok` or the same `Err` at every ask, the
/// first failure logged once as a warning.
fn remembered<T: Clone>(
    cache: &Mutex<HashMap<usize, std::result::Result<T, String>>>,
    key: usize,
    what: &str,
    load: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, String> {
    let mut outcomes = cache
        .lock()
        .map_err(|_| "the kernel cache lock is poisoned".to_string())?;
    outcomes
        .entry(key)
        .or_insert_with(|| {
            load().map_err(|e| {
                let why = format!("{e:#}");
                log::warn!("seesaw-loss: the CUDA kernels are unavailable on {what}: {why}");
                why
            })
        })
        .clone()
}

/// The kernels of device `ordinal`: compiled (or read from the disk cache)
/// and loaded at the first call, then remembered ([`remembered`]).
pub(crate) fn kernels(ordinal: usize) -> Loaded {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Loaded>>> = OnceLock::new();
    remembered(
        DEVICES.get_or_init(Default::default),
        ordinal,
        &format!("cuda:{ordinal}"),
        || load(ordinal),
    )
}

/// Whether the emulated kernels (feature `testing`) can be had: they are
/// compiled as for an sm_90 GPU first, so that the emulated path needs what
/// a GPU's does (NVRTC) and fails, and falls back, the same way.
#[cfg(feature = "testing")]
pub(crate) fn emulated_kernels() -> std::result::Result<(), String> {
    static EMULATED: OnceLock<Mutex<HashMap<usize, std::result::Result<(), String>>>> = OnceLock::new();
    remembered(EMULATED.get_or_init(Default::default), 0, "the kernel emulator", || {
        compile::compile_or_explain(90, compile::cache_dir().as_deref()).map(|_| ())
    })
}

/// Why nothing of cudarc may be touched on this machine, or `None`.
pub(crate) fn driver_missing() -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !tch::Cuda::is_available() {
                return Some("libtorch reports no CUDA device".into());
            }
            // SAFETY: only tries to dlopen the library under its usual names.
            if !unsafe { driver_sys::is_culib_present() } {
                return Some("the CUDA driver library (libcuda.so) cannot be loaded".into());
            }
            None
        })
        .clone()
}

fn load(ordinal: usize) -> Result<Arc<DeviceKernels>> {
    if let Some(why) = driver_missing() {
        anyhow::bail!(why);
    }
    let _restore = ContextGuard::save()?;
    let context = CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
    let (major, minor) = context.compute_capability()?;
    let multiprocessors = context
        .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .context("reading the device's multiprocessor count")?
        .max(1) as u32;
    let image = compile::compile_or_explain((major * 10 + minor) as u32, compile::cache_dir().as_deref())?;
    let module = match image.format {
        ImageFormat::Cubin => context.load_module(Ptx::from_binary(image.bytes)),
        ImageFormat::Ptx => context.load_module(Ptx::from_src(
            String::from_utf8_lossy(&image.bytes).trim_end_matches('\0').to_string(),
        )),
    }
    .context("loading the seesaw kernels")?;
    let mut functions = HashMap::new();
    for name in super::cuda::kernel_names() {
        let f = module.load_function(name).with_context(|| format!("kernel {name}"))?;
        functions.insert(name, f);
    }
    Ok(Arc::new(DeviceKernels {
        context,
        functions,
        multiprocessors,
    }))
}

extern "C" {
    fn seesaw_current_cuda_stream(device_index: i64, stream: *mut *mut c_void, err: *mut std::ffi::c_char) -> i32;
}

/// libtorch's current stream for the device, borrowed (never destroyed
/// here): launches on it are ordered with the caller's libtorch work, on
/// whatever stream the caller made current, and CUDA-graph capture sees them.
pub(crate) fn current_stream(kernels: &DeviceKernels, ordinal: usize) -> Result<Arc<CudaStream>> {
    let raw = current_raw_stream(ordinal)?;
    // SAFETY: libtorch owns the stream and keeps it alive while it is
    // current; the wrapper is used for this call's launches only.
    Ok(unsafe { kernels.context.wrap_borrowed_stream(raw as driver_sys::CUstream) })
}

/// libtorch's current CUDA stream for device `ordinal`, as the raw
/// `cudaStream_t` (which libtorch owns).
pub(crate) fn current_raw_stream(ordinal: usize) -> Result<*mut c_void> {
    let mut raw: *mut c_void = std::ptr::null_mut();
    let mut err = vec![0 as std::ffi::c_char; crate::autograd::ERR_LEN];
    // SAFETY: an out-parameter and an error buffer of ERR_LEN bytes.
    let rc = unsafe { seesaw_current_cuda_stream(ordinal as i64, &mut raw, err.as_mut_ptr()) };
    if rc != 0 {
        anyhow::bail!("libtorch's current CUDA stream: {}", crate::autograd::message(&err));
    }
    Ok(raw)
}

/// Restores the calling thread's CUDA context when dropped: the crate binds
/// its device's (primary) context to launch, and the caller's thread must
/// find its own afterwards.
pub(crate) struct ContextGuard(Option<driver_sys::CUcontext>);

impl ContextGuard {
    pub(crate) fn save() -> Result<ContextGuard> {
        Ok(ContextGuard(driver::ctx::get_current()?))
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        let now = driver::ctx::get_current().ok().flatten();
        if now != self.0 {
            // SAFETY: the context was current on this thread when saved, and
            // a null context unbinds.
            let _ = unsafe { driver::ctx::set_current(self.0.unwrap_or(std::ptr::null_mut())) };
        }
    }
}

/// `bytes` of page-locked host memory mapped into device `ordinal`'s
/// address space: the host pointer, the device address, and the context
/// that must outlive it.
pub(crate) fn alloc_mapped(ordinal: usize, bytes: usize) -> Result<(*mut c_void, u64, Arc<CudaContext>)> {
    let kernels = kernels(ordinal).map_err(anyhow::Error::msg)?;
    let _restore = ContextGuard::save()?;
    kernels.context.bind_to_thread()?;
    let flags = driver_sys::CU_MEMHOSTALLOC_DEVICEMAP | driver_sys::CU_MEMHOSTALLOC_PORTABLE;
    // SAFETY: the context is bound; the memory is cleared by the caller.
    let host = unsafe { driver::malloc_host(bytes, flags) }?;
    let mut device: driver_sys::CUdeviceptr = 0;
    // SAFETY: `host` was just allocated with DEVICEMAP in the bound context.
    if let Err(e) = unsafe { driver_sys::cuMemHostGetDevicePointer_v2(&mut device, host, 0) }.result() {
        free_mapped(host);
        return Err(e.into());
    }
    Ok((host, device, kernels.context.clone()))
}

/// Frees what [`alloc_mapped`] allocated.
pub(crate) fn free_mapped(host: *mut c_void) {
    // SAFETY: `host` came from `malloc_host` and is freed once.
    let _ = unsafe { driver::free_host(host) };
}
