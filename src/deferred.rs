//! Bad batches found on the fused paths, and the record that carries the
//! first one from the device to the host without making the host wait.
//!
//! `seesaw_prepare` (and the CPU mirror's twin) checks every label, weight
//! and count. A bad batch changes nothing (nothing is counted, every loss is
//! NaN, every gradient zero) and its first problem goes into the loss's
//! error record. Under [`Checks::Deferred`](crate::Checks::Deferred) the
//! next call, or [`SeesawLoss::check`](crate::SeesawLoss::check), reports
//! it; under `Immediate` the call that saw it does.
//!
//! On CUDA the record is page-locked host memory mapped into the device's
//! address space: the kernel writes it directly, the host reads it with
//! plain loads, and neither side copies or waits. The kernel writes the
//! fields, then fences, then the flag, so a host that sees the flag sees the
//! fields. The first bad batch among those in flight is the one reported.

use std::sync::Arc;

use anyhow::{Context, Result};
use tch::Device;

use crate::config::SeesawConfig;
use crate::error::Error;
use crate::fused::cuda::Arg;
use crate::inputs::label_bounds;
use crate::params::{ERROR_COUNT, ERROR_KIND, ERROR_LABEL, ERROR_LEN, ERROR_ROW, ERROR_SET, ERROR_VALUE, ERROR_WEIGHT};

/// What was wrong with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// A label out of range; `value` is the label.
    Label,
    /// A weight that is NaN or infinite; `value` holds its f32 bits.
    Weight,
    /// A negative count; `row` is the counter, `value` the count.
    Count,
}

/// The first problem of a bad batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadBatch {
    pub problem: Problem,
    pub row: i64,
    pub value: i64,
}

impl BadBatch {
    /// The error to return; `earlier_call` says it was a previous call's
    /// batch.
    pub(crate) fn into_error(self, config: &SeesawConfig, earlier_call: bool) -> Error {
        match self.problem {
            Problem::Label => Error::Label {
                row: Some(self.row),
                label: self.value,
                allowed: label_bounds(config).1,
                earlier_call,
            },
            Problem::Weight => Error::Weight {
                row: Some((self.row, f32::from_bits(self.value as u32))),
                earlier_call,
            },
            Problem::Count => Error::Counts(format!(
                "cum_samples holds a value that is not a count (from a checkpoint?): counter {} is {}, \
                 negative or within this batch of int64's limit; {}",
                self.row,
                self.value,
                if earlier_call {
                    "an earlier call's batch changed nothing"
                } else {
                    "the counts were left as they are"
                }
            )),
        }
    }
}

/// A loss's error record on its device: `[ERROR_LEN]` int64 slots.
pub(crate) struct ErrorRecord {
    memory: Memory,
}

enum Memory {
    /// Page-locked host memory mapped into a CUDA device's address space.
    Mapped {
        host: *mut i64,
        device: u64,
        _context: Arc<cudarc::driver::CudaContext>,
    },
    /// Host memory the emulated kernels write (feature `testing`).
    #[cfg(feature = "testing")]
    Emulated(Box<[i64; ERROR_LEN as usize]>),
}

// SAFETY: the record is only touched through `&self`/`&mut self` of its
// owner, and the mapped memory is plain host memory.
unsafe impl Send for ErrorRecord {}

impl ErrorRecord {
    /// A cleared record for calls on `device`.
    pub(crate) fn new(device: Device) -> Result<ErrorRecord> {
        let memory = match device {
            Device::Cuda(ordinal) => {
                let (host, device, context) = crate::fused::device::alloc_mapped(ordinal, ERROR_LEN as usize * 8)
                    .context("allocating the error record")?;
                Memory::Mapped {
                    host: host as *mut i64,
                    device,
                    _context: context,
                }
            }
            #[cfg(feature = "testing")]
            Device::Cpu => Memory::Emulated(Box::new([0; ERROR_LEN as usize])),
            other => anyhow::bail!("no error record for {other:?}"),
        };
        let record = ErrorRecord { memory };
        for slot in 0..ERROR_LEN as usize {
            // SAFETY: `host` covers ERROR_LEN slots.
            unsafe { std::ptr::write_volatile(record.host().add(slot), 0) };
        }
        Ok(record)
    }

    fn host(&self) -> *mut i64 {
        match &self.memory {
            Memory::Mapped { host, .. } => *host,
            #[cfg(feature = "testing")]
            Memory::Emulated(slots) => slots.as_ptr() as *mut i64,
        }
    }

    /// The record as a kernel argument.
    pub(crate) fn arg(&self) -> Arg {
        let addr = match &self.memory {
            Memory::Mapped { device, .. } => *device,
            #[cfg(feature = "testing")]
            Memory::Emulated(slots) => slots.as_ptr() as u64,
        };
        Arg::Buffer {
            addr,
            bytes: ERROR_LEN as u64 * 8,
        }
    }

    /// The recorded bad batch, if the device has written one by now, and a
    /// cleared record. Plain loads of host memory: no wait.
    pub(crate) fn take(&mut self) -> Option<BadBatch> {
        let host = self.host();
        // SAFETY: `host` covers ERROR_LEN slots; the device writes the flag
        // last, after a system-wide fence.
        unsafe {
            if std::ptr::read_volatile(host.add(ERROR_SET as usize)) == 0 {
                return None;
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            let slot = |i: u32| std::ptr::read_volatile(host.add(i as usize));
            let problem = match slot(ERROR_KIND) as u32 {
                ERROR_LABEL => Problem::Label,
                ERROR_WEIGHT => Problem::Weight,
                ERROR_COUNT => Problem::Count,
                _ => Problem::Label,
            };
            let bad = BadBatch {
                problem,
                row: slot(ERROR_ROW),
                value: slot(ERROR_VALUE),
            };
            std::ptr::write_volatile(host.add(ERROR_SET as usize), 0);
            Some(bad)
        }
    }
}

impl Drop for ErrorRecord {
    fn drop(&mut self) {
        // Without the `testing` feature, mapped memory is the only kind.
        #[allow(irrefutable_let_patterns)]
        if let Memory::Mapped { host, .. } = self.memory {
            crate::fused::device::free_mapped(host as *mut std::ffi::c_void);
        }
    }
}
