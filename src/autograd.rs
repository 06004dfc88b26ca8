//! The autograd node of the fused loss, through the C++ shim
//! `shim/seesaw_autograd.cpp` (compiled by `build.rs` against the libtorch
//! tch builds against).
//!
//! tch cannot define an autograd function; the shim subclasses libtorch's
//! `torch::autograd::Function` and calls back into this module:
//! [`forward_callback`] computes the loss and per-row statistics,
//! [`backward_callback`] the gradient times the upstream gradient
//! ([`crate::fused::node_forward`], [`crate::fused::node_backward`]).
//!
//! At the boundary: tensors travel as the heap-allocated `at::Tensor`
//! handles tch itself wraps (each side owns what it is handed); a Rust error
//! or panic in a callback comes back as text and is raised as a libtorch
//! error, so it surfaces as an `Err` of the forward call or of
//! `Tensor::f_backward`. The callbacks use only libtorch and cudarc calls that
//! are safe on any thread, which matters because autograd runs CUDA backward
//! passes on its own worker thread.

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{anyhow, Result};
use tch::Tensor;
use torch_sys::C_tensor;

use crate::call::Call;
use crate::params::SeesawParams;

/// The size of the error buffers the shim passes (`SEESAW_ERR_LEN`).
pub(crate) const ERR_LEN: usize = 4096;

type ForwardFn = unsafe extern "C" fn(
    params: *const SeesawParams,
    scores: *mut C_tensor,
    labels: *mut C_tensor,
    weights: *mut C_tensor,
    log_counts: *mut C_tensor,
    state: *mut C_tensor,
    class_loss: *mut *mut C_tensor,
    objectness_loss: *mut *mut C_tensor,
    saved: *mut *mut C_tensor,
    err: *mut c_char,
) -> c_int;

type BackwardFn = unsafe extern "C" fn(
    params: *const SeesawParams,
    scores: *mut C_tensor,
    labels: *mut C_tensor,
    weights: *mut C_tensor,
    log_counts: *mut C_tensor,
    state: *mut C_tensor,
    saved: *mut C_tensor,
    g_classes: *mut C_tensor,
    g_objectness: *mut C_tensor,
    grad: *mut *mut C_tensor,
    err: *mut c_char,
) -> c_int;

extern "C" {
    fn seesaw_autograd_apply(
        params: *const SeesawParams,
        scores: *const C_tensor,
        labels: *const C_tensor,
        weights: *const C_tensor,
        log_counts: *const C_tensor,
        state: *const C_tensor,
        forward: ForwardFn,
        backward: BackwardFn,
        class_loss: *mut *mut C_tensor,
        objectness_loss: *mut *mut C_tensor,
        err: *mut c_char,
    ) -> c_int;
}

/// Runs the fused loss through the autograd node: returns the class part and
/// (detection) the objectness part, reduced as the call asks (per row, all
/// rows, for [`Reduction::None`]). Their gradient reaches `call.scores`.
pub(crate) fn apply(call: &Call) -> Result<(Tensor, Option<Tensor>)> {
    let mut class_loss: *mut C_tensor = std::ptr::null_mut();
    let mut objectness_loss: *mut C_tensor = std::ptr::null_mut();
    let mut err = vec![0 as c_char; ERR_LEN];
    // SAFETY: the tensor pointers are live tch tensors for the duration of
    // the call (the shim copies the handles it keeps); the out-pointers
    // receive owned handles or stay null.
    let rc = unsafe {
        seesaw_autograd_apply(
            &call.params,
            call.scores.as_ptr(),
            call.labels.as_ptr(),
            call.weights.as_ref().map_or(std::ptr::null(), |w| w.as_ptr()),
            call.log_counts.as_ptr(),
            call.state.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            forward_callback,
            backward_callback,
            &mut class_loss,
            &mut objectness_loss,
            err.as_mut_ptr(),
        )
    };
    // SAFETY: non-null out-pointers are handles the shim gave up.
    let (classes, objectness) = unsafe { (owned(class_loss), owned(objectness_loss)) };
    if rc != 0 {
        return Err(anyhow!(message(&err)));
    }
    let classes = classes.ok_or_else(|| anyhow!("the autograd node returned no class loss"))?;
    Ok((classes, objectness))
}

/// # Safety
/// `t` is null or an `at::Tensor` handle this side now owns.
unsafe fn owned(t: *mut C_tensor) -> Option<Tensor> {
    (!t.is_null()).then(|| Tensor::from_ptr(t))
}

/// Hands a tensor's handle to the shim, which takes ownership.
fn give(mut t: Tensor) -> *mut C_tensor {
    let ptr = t.as_mut_ptr();
    std::mem::forget(t);
    ptr
}

pub(crate) fn message(err: &[c_char]) -> String {
    let bytes: Vec<u8> = err.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `body`, turning an error or a panic into a message in `err` and a
/// non-zero return: nothing unwinds into C++.
///
/// # Safety
/// `err` points to `ERR_LEN` writable bytes.
unsafe fn guarded(err: *mut c_char, body: impl FnOnce() -> Result<()>) -> c_int {
    let outcome = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => format!("{e:#}"),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            format!("panic in the Seesaw fused loss: {what}")
        }
    };
    let bytes = outcome.as_bytes();
    let len = bytes.len().min(ERR_LEN - 1);
    std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, err, len);
    *err.add(len) = 0;
    1
}

/// The node's forward (called by the shim with the node's inputs).
unsafe extern "C" fn forward_callback(
    params: *const SeesawParams,
    scores: *mut C_tensor,
    labels: *mut C_tensor,
    weights: *mut C_tensor,
    log_counts: *mut C_tensor,
    state: *mut C_tensor,
    class_loss: *mut *mut C_tensor,
    objectness_loss: *mut *mut C_tensor,
    saved: *mut *mut C_tensor,
    err: *mut c_char,
) -> c_int {
    // Take ownership first, so that the handles are freed whatever happens.
    let (scores, labels, weights, log_counts, state) = (
        owned(scores),
        owned(labels),
        owned(weights),
        owned(log_counts),
        owned(state),
    );
    let params = *params;
    guarded(err, move || {
        let missing = || anyhow!("the autograd node got no scores, labels or counts");
        let call = Call::from_params(
            params,
            scores.ok_or_else(missing)?,
            labels.ok_or_else(missing)?,
            weights,
            log_counts.ok_or_else(missing)?,
            state,
        );
        faults::check(faults::Fault::ForwardError)?;
        let (classes, objectness, stats) = crate::fused::node_forward(&call)?;
        *class_loss = give(classes);
        *objectness_loss = objectness.map_or(std::ptr::null_mut(), give);
        *saved = give(stats);
        Ok(())
    })
}

/// The node's backward (called by the shim, on autograd's thread for the
/// device).
unsafe extern "C" fn backward_callback(
    params: *const SeesawParams,
    scores: *mut C_tensor,
    labels: *mut C_tensor,
    weights: *mut C_tensor,
    log_counts: *mut C_tensor,
    state: *mut C_tensor,
    saved: *mut C_tensor,
    g_classes: *mut C_tensor,
    g_objectness: *mut C_tensor,
    grad: *mut *mut C_tensor,
    err: *mut c_char,
) -> c_int {
    let (scores, labels, weights, log_counts, state, saved) = (
        owned(scores),
        owned(labels),
        owned(weights),
        owned(log_counts),
        owned(state),
        owned(saved),
    );
    let (g_classes, g_objectness) = (owned(g_classes), owned(g_objectness));
    let params = *params;
    guarded(err, move || {
        let missing = || anyhow!("the autograd node lost its saved tensors");
        let call = Call::from_params(
            params,
            scores.ok_or_else(missing)?,
            labels.ok_or_else(missing)?,
            weights,
            log_counts.ok_or_else(missing)?,
            state,
        );
        faults::check(faults::Fault::BackwardError)?;
        faults::check(faults::Fault::BackwardPanic)?;
        let g = crate::fused::node_backward(&call, &saved.ok_or_else(missing)?, g_classes, g_objectness)?;
        *grad = give(g);
        Ok(())
    })
}

/// Fault injection for the tests of the FFI boundary (feature `testing`):
/// the next callback of the given kind on the injecting thread fails once
/// (CPU autograd runs the backward on the thread that calls it). Without the
/// feature the checks compile to nothing.
pub(crate) mod faults {
    /// A failure the next matching autograd callback produces.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Fault {
        /// The node's forward returns an error.
        ForwardError,
        /// The node's backward returns an error.
        BackwardError,
        /// The node's backward panics.
        BackwardPanic,
    }

    #[cfg(feature = "testing")]
    thread_local! {
        static NEXT: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
    }

    /// Makes the next autograd callback of `fault`'s kind on this thread
    /// fail.
    ///
    /// ```
    /// use seesaw_loss::testing::{inject, Fault};
    /// inject(Fault::BackwardError);
    /// # inject(Fault::ForwardError); // replaces it: nothing fails later
    /// ```
    #[cfg(feature = "testing")]
    pub fn inject(fault: Fault) {
        NEXT.with(|n| n.set(Some(fault)));
    }

    #[cfg(feature = "testing")]
    pub(crate) fn check(fault: Fault) -> anyhow::Result<()> {
        if NEXT.with(|n| n.get()) != Some(fault) {
            return Ok(());
        }
        NEXT.with(|n| n.set(None));
        match fault {
            Fault::BackwardPanic => panic!("injected panic in the backward callback"),
            _ => anyhow::bail!("injected {fault:?} in the Seesaw autograd callback"),
        }
    }

    #[cfg(not(feature = "testing"))]
    #[inline(always)]
    pub(crate) fn check(_fault: Fault) -> anyhow::Result<()> {
        Ok(())
    }
}
