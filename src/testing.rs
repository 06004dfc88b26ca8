//! Test aids, behind the cargo feature `testing` (which `scripts/test.sh`
//! turns on); nothing here is in the default build.
//!
//! - [`emulate_kernels`] runs the CUDA path on CPU tensors: the host code of
//!   the CUDA step with the kernels of `kernels/seesaw.cu` executed by the
//!   host emulator (`kernels/emulator.cpp`), which also fails launches whose
//!   arguments do not match a kernel's parameters, warps that diverge at an
//!   intrinsic, and stops the process on an access past a buffer's end.
//! - Counters of what a GPU step costs besides arithmetic:
//!   [`kernel_launches`], [`host_reads`] and [`libtorch_ops`].
//! - [`poison_outputs`] fills kernel outputs with NaN before each launch, so
//!   an element a kernel fails to write fails the checks.
//! - [`inject`] makes the next autograd callback fail, to test the FFI
//!   boundary.
//!
//! ```
//! use seesaw_loss::{testing, SeesawConfig, SeesawLoss};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(4))?;
//! let launches = testing::kernel_launches();
//! loss.forward(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)), &Tensor::from_slice(&[0i64, 3]), None, None)?;
//! // Without emulation, CPU calls run the CPU mirror: no kernel launches.
//! assert_eq!(testing::kernel_launches(), launches);
//! # Ok::<(), seesaw_loss::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use crate::autograd::faults::{inject, Fault};

static EMULATING: AtomicBool = AtomicBool::new(false);
static POISON: AtomicBool = AtomicBool::new(false);
static NVRTC_HIDDEN: AtomicBool = AtomicBool::new(false);
static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// Routes every later fused call on CPU tensors, in this process, through
/// the CUDA path's host code with emulated kernels. The CUDA defaults apply
/// there too. Slow (every warp intrinsic switches 32 fibers): for tests with
/// a few thousand rows.
///
/// ```
/// seesaw_loss::testing::emulate_kernels();
/// ```
pub fn emulate_kernels() {
    EMULATING.store(true, Ordering::SeqCst);
}

/// Crate kernel launches so far in this process, real or emulated.
///
/// ```
/// let _ = seesaw_loss::testing::kernel_launches();
/// ```
pub fn kernel_launches() -> u64 {
    LAUNCHES.load(Ordering::SeqCst)
}

/// Reads the crate has made so far that bring device data to the host and
/// so wait for the device (counted where they happen, whatever the device:
/// on CPU tensors the same code would wait on a GPU).
///
/// ```
/// let _ = seesaw_loss::testing::host_reads();
/// ```
pub fn host_reads() -> u64 {
    HOST_READS.load(Ordering::SeqCst)
}

/// libtorch operator calls so far in this process, on every thread, as a
/// global RecordFunction observer sees them (counting starts at the first
/// call of this function).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Every operator call, nested ones included.
    pub calls: u64,
    /// Calls that would be a device launch: aten operators other than views,
    /// allocations and no-op conversions none of whose nested calls counts
    /// (so a composite counts as its parts).
    pub launches: u64,
}

extern "C" {
    fn seesaw_testing_op_counts(calls: *mut u64, launches: *mut u64);
}

/// See [`OpCounts`]. The first call installs the observer and returns zeros.
///
/// ```
/// let before = seesaw_loss::testing::libtorch_ops();
/// let _ = tch::Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu)).sum(tch::Kind::Float);
/// assert!(seesaw_loss::testing::libtorch_ops().launches > before.launches);
/// ```
pub fn libtorch_ops() -> OpCounts {
    let mut counts = OpCounts::default();
    // SAFETY: two out-parameters.
    unsafe { seesaw_testing_op_counts(&mut counts.calls, &mut counts.launches) };
    counts
}

/// The bytes one emulated kernel launch moved in global memory, per kernel
/// argument (in the kernel's parameter order; 0 for arguments that are not
/// buffers). Every access counts: a byte read twice counts twice, as the
/// emulator has no cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelTraffic {
    /// The kernel's name.
    pub kernel: String,
    /// Blocks of the launch.
    pub grid: u32,
    /// Bytes read from each argument.
    pub read: Vec<u64>,
    /// Bytes written to each argument.
    pub written: Vec<u64>,
}

static TRAFFIC: std::sync::Mutex<Vec<KernelTraffic>> = std::sync::Mutex::new(Vec::new());

/// The traffic of the emulated launches since the last call (of every
/// thread: a test that reads it runs alone in its process).
///
/// ```
/// assert!(seesaw_loss::testing::take_kernel_traffic().iter().all(|t| !t.kernel.is_empty()));
/// ```
pub fn take_kernel_traffic() -> Vec<KernelTraffic> {
    std::mem::take(&mut *TRAFFIC.lock().unwrap_or_else(|e| e.into_inner()))
}

pub(crate) fn record_traffic(traffic: KernelTraffic) {
    TRAFFIC.lock().unwrap_or_else(|e| e.into_inner()).push(traffic);
}

/// Whether later launches fill their outputs with NaN first (default off).
///
/// ```
/// seesaw_loss::testing::poison_outputs(true);
/// # seesaw_loss::testing::poison_outputs(false);
/// ```
pub fn poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// Makes NVRTC unavailable to this process, as on a machine without it, so
/// that getting the kernels fails (under [`emulate_kernels`] too, where the
/// kernels are compiled as for a GPU before they are emulated). Call it
/// before the first fused call: the outcome is remembered for the process.
///
/// ```no_run
/// seesaw_loss::testing::hide_nvrtc();
/// assert!(!seesaw_loss::cuda::nvrtc_available());
/// ```
pub fn hide_nvrtc() {
    NVRTC_HIDDEN.store(true, Ordering::SeqCst);
}

pub(crate) fn nvrtc_hidden() -> bool {
    NVRTC_HIDDEN.load(Ordering::SeqCst)
}

pub(crate) fn emulating() -> bool {
    EMULATING.load(Ordering::SeqCst)
}

pub(crate) fn poisoning() -> bool {
    POISON.load(Ordering::SeqCst)
}

pub(crate) fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::SeqCst);
}

pub(crate) fn count_host_read() {
    HOST_READS.fetch_add(1, Ordering::SeqCst);
}

/// GPU test aids: libtorch's current stream, and CUDA-graph capture of the
/// work queued on it (through the driver; libtorch's caching allocator does
/// not know of the capture, so a test keeps every tensor of the captured
/// work alive and allocates nothing between capture and replay). They fail
/// with a clear error where there is no CUDA device.
pub mod cuda {
    use std::ffi::c_char;
    use std::sync::Arc;

    use cudarc::driver::{sys, CudaGraph, CudaStream};

    use crate::error::{Error, Result};

    extern "C" {
        fn seesaw_testing_set_stream(device: i64, side: i32, err: *mut c_char) -> i32;
    }

    fn set_stream(device: i64, side: bool) -> Result<()> {
        let mut err = vec![0 as c_char; crate::autograd::ERR_LEN];
        // SAFETY: an error buffer of ERR_LEN bytes.
        if unsafe { seesaw_testing_set_stream(device, side as i32, err.as_mut_ptr()) } != 0 {
            return Err(Error::Internal(crate::autograd::message(&err)));
        }
        Ok(())
    }

    /// Makes a stream from libtorch's pool (non-blocking: not ordered with
    /// the legacy default stream) the current stream of `device`.
    ///
    /// ```no_run
    /// seesaw_loss::testing::cuda::use_side_stream(0)?;
    /// # Ok::<(), seesaw_loss::Error>(())
    /// ```
    pub fn use_side_stream(device: i64) -> Result<()> {
        set_stream(device, true)
    }

    /// Makes the default stream the current stream of `device` again.
    ///
    /// ```no_run
    /// seesaw_loss::testing::cuda::use_default_stream(0)?;
    /// # Ok::<(), seesaw_loss::Error>(())
    /// ```
    pub fn use_default_stream(device: i64) -> Result<()> {
        set_stream(device, false)
    }

    /// A CUDA graph of the work `capture` saw queued on libtorch's current
    /// stream, replayable on that stream.
    pub struct Graph {
        graph: CudaGraph,
        _stream: Arc<CudaStream>,
    }

    impl Graph {
        /// Captures, in relaxed mode, what `work` queues on the current
        /// stream of `device` (which must not be the legacy default stream:
        /// see [`use_side_stream`]); nothing of it runs until a replay.
        ///
        /// ```no_run
        /// use seesaw_loss::testing::cuda::{use_side_stream, Graph};
        /// use_side_stream(0)?;
        /// let graph = Graph::capture(0, || Ok(()))?;
        /// graph.replay()?;
        /// # Ok::<(), seesaw_loss::Error>(())
        /// ```
        pub fn capture(device: usize, work: impl FnOnce() -> Result<()>) -> Result<Graph> {
            let driver = |e: cudarc::driver::DriverError| Error::Internal(format!("CUDA graph capture: {e:?}"));
            let kernels = crate::fused::device::kernels(device).map_err(Error::KernelUnavailable)?;
            let stream = crate::fused::device::current_stream(&kernels, device)?;
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(driver)?;
            let outcome = work();
            let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(driver)?;
            outcome?;
            match graph {
                Some(graph) => Ok(Graph { graph, _stream: stream }),
                None => Err(Error::Internal("the capture recorded no work".into())),
            }
        }

        /// Runs the captured work again.
        pub fn replay(&self) -> Result<()> {
            self.graph
                .launch()
                .map_err(|e| Error::Internal(format!("CUDA graph replay: {e:?}")))
        }
    }
}
