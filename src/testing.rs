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
//! # Ok::<(), anyhow::Error>(())
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
