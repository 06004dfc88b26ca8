//! A [`CountSync`] over NCCL (cargo feature `nccl`): the step's histogram
//! is all-reduced in place on libtorch's current CUDA stream, so the step
//! gains no host wait.
//!
//! NCCL is the PyTorch wheel's (`nvidia/nccl/lib/libnccl.so.2` beside the
//! loaded libtorch), opened by full path, in downstream binaries too. The
//! five NCCL functions the crate calls are declared with cudarc's NCCL types
//! (`cudarc::nccl::sys`) but looked up in that library here, not through
//! cudarc's loader: cudarc 0.19 looks only for names the wheel does not ship
//! (`libnccl.so`, `libnccl.so.13`, ...), cannot be handed a library that is
//! already open, and panics when it finds none.

use std::ffi::{c_int, c_void, CStr};
use std::sync::OnceLock;

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId};

use tch::{Device, Kind, Tensor};

use crate::count_sync::CountSync;
use crate::error::{Error, Result};
use crate::fused::device::{self, ContextGuard};

/// `NCCL_UNIQUE_ID_BYTES`.
const UNIQUE_ID_BYTES: usize = std::mem::size_of::<ncclUniqueId>();

// The signatures of nccl.h, in cudarc's types.
type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t;
type CommInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> ncclResult_t;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> ncclResult_t;
type CommDestroy = unsafe extern "C" fn(ncclComm_t) -> ncclResult_t;
type ErrorString = unsafe extern "C" fn(ncclResult_t) -> *const std::ffi::c_char;

/// The NCCL functions the crate calls, from the wheel's library.
struct Nccl {
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    comm_destroy: CommDestroy,
    error_string: ErrorString,
}

// SAFETY: plain function pointers into a library that stays loaded.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

fn nccl() -> Result<&'static Nccl> {
    static NCCL: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::KernelUnavailable(format!("NCCL: {e}")))
}

fn load() -> Result<Nccl> {
    if !tch::Cuda::is_available() {
        return Err(Error::KernelUnavailable("libtorch reports no CUDA device".into()));
    }
    let handle = crate::link::open_nccl()?;
    let symbol = |name: &CStr| -> Result<*mut c_void> {
        // SAFETY: a live handle and a NUL-terminated name.
        let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if f.is_null() {
            return Err(Error::KernelUnavailable(format!("libnccl.so.2 has no {name:?}")));
        }
        Ok(f)
    };
    // SAFETY: each symbol has the signature nccl.h gives it.
    unsafe {
        Ok(Nccl {
            get_unique_id: std::mem::transmute::<*mut c_void, GetUniqueId>(symbol(c"ncclGetUniqueId")?),
            comm_init_rank: std::mem::transmute::<*mut c_void, CommInitRank>(symbol(c"ncclCommInitRank")?),
            all_reduce: std::mem::transmute::<*mut c_void, AllReduce>(symbol(c"ncclAllReduce")?),
            comm_destroy: std::mem::transmute::<*mut c_void, CommDestroy>(symbol(c"ncclCommDestroy")?),
            error_string: std::mem::transmute::<*mut c_void, ErrorString>(symbol(c"ncclGetErrorString")?),
        })
    }
}

fn check(nccl: &Nccl, what: &str, result: ncclResult_t) -> Result<()> {
    if result == ncclResult_t::ncclSuccess {
        return Ok(());
    }
    // SAFETY: NCCL returns a static C string for any result code.
    let why = unsafe { CStr::from_ptr((nccl.error_string)(result)) }.to_string_lossy();
    Err(Error::Internal(format!("{what}: NCCL error {result:?} ({why})")))
}

/// The id that the ranks of one NCCL communicator share: made on one rank
/// ([`NcclUniqueId::new`]) and sent to the others by any means (its
/// [`bytes`](NcclUniqueId::bytes)).
///
/// ```no_run
/// # #[cfg(feature = "nccl")] {
/// use seesaw_loss::NcclUniqueId;
/// let id = NcclUniqueId::new()?;
/// let again = NcclUniqueId::from_bytes(*id.bytes());
/// # }
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct NcclUniqueId([u8; UNIQUE_ID_BYTES]);

impl NcclUniqueId {
    /// A new id (`ncclGetUniqueId`), on the rank that starts the group.
    pub fn new() -> Result<NcclUniqueId> {
        let nccl = nccl()?;
        let mut raw = ncclUniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: an out-parameter of the right size.
        check(nccl, "ncclGetUniqueId", unsafe { (nccl.get_unique_id)(&mut raw) })?;
        Ok(NcclUniqueId(raw.internal.map(|c| c as u8)))
    }

    /// The id as bytes, to send to the other ranks.
    pub fn bytes(&self) -> &[u8; UNIQUE_ID_BYTES] {
        &self.0
    }

    /// An id received from the rank that made it.
    pub fn from_bytes(bytes: [u8; UNIQUE_ID_BYTES]) -> NcclUniqueId {
        NcclUniqueId(bytes)
    }
}

/// Sums the step's histogram over the ranks of an NCCL communicator, in
/// place, on libtorch's current stream of the histogram's device.
///
/// ```no_run
/// # #[cfg(feature = "nccl")] {
/// use seesaw_loss::{NcclCountSync, NcclUniqueId, SeesawConfig, SeesawLoss};
/// use tch::{nn, Device};
/// // Rank 0 of 1; with several ranks, one makes the id and sends it to the others.
/// let id = NcclUniqueId::new()?;
/// let vs = nn::VarStore::new(Device::Cuda(0));
/// let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(1203))?;
/// loss.set_count_sync(Some(Box::new(NcclCountSync::new(0, 1, &id, 0)?)));
/// # }
/// # Ok::<(), seesaw_loss::Error>(())
/// ```
pub struct NcclCountSync {
    nccl: &'static Nccl,
    comm: ncclComm_t,
    /// Whether this value made the communicator (and destroys it).
    owned: bool,
}

// SAFETY: an NCCL communicator may be used from any one thread at a time;
// the loss owns its hook and calls it from the thread that runs the call.
unsafe impl Send for NcclCountSync {}

impl NcclCountSync {
    /// Joins (collectively, with every other rank) a communicator of `world`
    /// ranks as `rank`, on CUDA device `device` (`ncclCommInitRank`).
    pub fn new(rank: usize, world: usize, id: &NcclUniqueId, device: usize) -> Result<NcclCountSync> {
        if rank >= world {
            return Err(Error::Config(format!(
                "rank {rank} is not below the world size {world}"
            )));
        }
        let nccl = nccl()?;
        let kernels = device::kernels(device).map_err(Error::KernelUnavailable)?;
        let _restore = ContextGuard::save()?;
        kernels.context.bind_to_thread().map_err(anyhow::Error::from)?;
        let raw = ncclUniqueId {
            internal: id.0.map(|b| b as std::ffi::c_char),
        };
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: an out-parameter; the device's context is current.
        check(nccl, "ncclCommInitRank", unsafe {
            (nccl.comm_init_rank)(&mut comm, world as c_int, raw, rank as c_int)
        })?;
        Ok(NcclCountSync {
            nccl,
            comm,
            owned: true,
        })
    }

    /// Uses a communicator the caller already has (an `ncclComm_t`, for
    /// example one a framework made); the caller keeps owning it.
    ///
    /// # Safety
    /// `comm` is a live NCCL communicator of this process's NCCL (the
    /// PyTorch wheel's), and it outlives the returned value.
    pub unsafe fn from_raw_communicator(comm: *mut c_void) -> Result<NcclCountSync> {
        Ok(NcclCountSync {
            nccl: nccl()?,
            comm: comm.cast(),
            owned: false,
        })
    }
}

impl CountSync for NcclCountSync {
    fn sum_over_ranks(&mut self, histogram: &mut Tensor) -> Result<()> {
        let Device::Cuda(ordinal) = histogram.device() else {
            return Err(Error::Device(format!(
                "NCCL sums CUDA tensors; the counts are on {:?}",
                histogram.device()
            )));
        };
        if histogram.kind() != Kind::Int64 || !histogram.is_contiguous() {
            return Err(Error::Internal("the histogram must be contiguous int64".into()));
        }
        let stream = device::current_raw_stream(ordinal)?;
        let data = histogram.data_ptr();
        // SAFETY: an in-place all-reduce of `numel` int64 values on a live
        // CUDA tensor, queued on libtorch's current stream (ordered after
        // the kernels that wrote it and before those that read it).
        check(self.nccl, "ncclAllReduce", unsafe {
            (self.nccl.all_reduce)(
                data,
                data,
                histogram.numel(),
                ncclDataType_t::ncclInt64,
                ncclRedOp_t::ncclSum,
                self.comm,
                stream.cast(),
            )
        })
    }
}

impl Drop for NcclCountSync {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: a communicator this value made and nothing else uses.
            let _ = unsafe { (self.nccl.comm_destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a GPU (or NCCL), asking for NCCL is an error, not a panic.
    #[test]
    fn without_a_gpu_nccl_is_an_error() {
        if tch::Cuda::is_available() {
            return;
        }
        let err = NcclUniqueId::new().err().expect("no GPU, no NCCL");
        assert!(matches!(err, Error::KernelUnavailable(_)), "{err}");
        assert!(err.to_string().contains("no CUDA device"), "{err}");
    }

    /// A communicator's rank is checked before anything is loaded.
    #[test]
    fn a_rank_outside_the_world_is_a_configuration_error() {
        let id = NcclUniqueId::from_bytes([0; UNIQUE_ID_BYTES]);
        let err = NcclCountSync::new(2, 2, &id, 0).err().expect("rank 2 of 2");
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}
