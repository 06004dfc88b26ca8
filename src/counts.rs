//! The cumulative per-class sample counts, the loss's only state.
//!
//! They live in the `VarStore` as a non-trainable int64 variable named
//! `cum_samples`, so `vs.save` / `vs.load` checkpoint them. int64 keeps them
//! exact (an f32 counter, as the Python references use, stops counting at
//! 2^24 = 16.7M samples), and `vs.half()` / `vs.float()` leave integer
//! variables alone. `vs.load` gives a variable the checkpoint's kind, so a
//! checkpoint written with float counts is accepted, checked, and turned back
//! into int64 on the next call.

use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Name of the variable under the loss's path.
pub(crate) const VAR_NAME: &str = "cum_samples";

pub(crate) struct Counts {
    var: Tensor,
    len: i64,
}

impl Counts {
    pub(crate) fn new(path: &tch::nn::Path, len: i64) -> Result<Self> {
        let zeros = Tensor::f_zeros([len], (Kind::Int64, path.device()))?;
        // tch has no fallible form of `Path::add` (it unwraps the store's
        // lock and libtorch's result): a panic there stops here, as an error.
        let var = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| path.add(VAR_NAME, zeros, false))).map_err(
            |panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic in tch");
                Error::Internal(format!("registering {VAR_NAME} in the VarStore failed: {why}"))
            },
        )?;
        Ok(Counts { var, len })
    }

    /// The counts as they are now (a copy, int64).
    pub(crate) fn snapshot(&self) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut copy = Tensor::f_empty([self.var.numel() as i64], (Kind::Int64, self.var.device()))?;
        copy.f_copy_(&self.var.f_view([-1])?)?;
        Ok(copy)
    }

    /// The variable itself, in whatever kind a checkpoint left it.
    pub(crate) fn raw(&self) -> &Tensor {
        &self.var
    }

    /// Checks what a checkpoint may have changed: kind, length and device.
    /// Integer and floating kinds can hold counts (floating ones are checked
    /// for values and turned back into int64 by [`Counts::normalize`]).
    pub(crate) fn check_layout(&self, device: Device) -> Result<()> {
        let kind = self.var.kind();
        let holds_counts = matches!(kind, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8)
            || matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
        if !holds_counts {
            return Err(Error::Counts(format!(
                "cum_samples is {kind:?}, which cannot hold counts (a checkpoint or a hand-set value?); \
                 load int64 counts (or floating ones) into it"
            )));
        }
        let shape = self.var.size();
        if shape != [self.len] {
            return Err(Error::Counts(format!(
                "cum_samples has shape {shape:?}, expected [{}]: the checkpoint does not match this head",
                self.len
            )));
        }
        if self.var.device() != device {
            return Err(Error::Device(format!(
                "cum_samples is on {:?} but cls_score is on {device:?}; build the loss under a VarStore on the scores' device",
                self.var.device()
            )));
        }
        Ok(())
    }

    /// Brings counts of another kind (a checkpoint's) back to int64; call
    /// once they are known to be finite, non-negative whole numbers within
    /// int64.
    pub(crate) fn normalize(&self) -> Result<()> {
        if self.var.kind() != Kind::Int64 {
            let _guard = tch::no_grad_guard();
            let exact = self.var.f_round()?.f_to_kind(Kind::Int64)?;
            let mut var = self.var.shallow_clone();
            var.f_set_data(&exact)?;
        }
        Ok(())
    }

    /// Adds `step` to `counts[label]` for every label (1 counts a batch, -1
    /// takes it back out after a failed call), with libtorch's `index_add_`:
    /// the labels were checked. (The fused paths count in their prepare
    /// step.)
    pub(crate) fn add(&self, labels: &Tensor, step: i64) -> Result<()> {
        if labels.numel() == 0 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let steps = Tensor::f_full([labels.numel() as i64], step, (Kind::Int64, labels.device()))?;
        let mut var = self.var.shallow_clone();
        let _ = var.f_index_add_(0, labels, &steps)?;
        Ok(())
    }

    /// The histogram of `labels` (checked) over the counters, int64 on the
    /// counts' device.
    pub(crate) fn histogram(&self, labels: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut histogram = Tensor::f_zeros([self.len], (Kind::Int64, self.var.device()))?;
        if labels.numel() > 0 {
            let ones = Tensor::f_ones([labels.numel() as i64], (Kind::Int64, labels.device()))?;
            let _ = histogram.f_index_add_(0, labels, &ones)?;
        }
        Ok(histogram)
    }

    /// Adds `sign` times `histogram` (int64, one entry per counter) to the
    /// counts.
    pub(crate) fn add_histogram(&self, histogram: &Tensor, sign: i64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut var = self.var.shallow_clone();
        if sign >= 0 {
            let _ = var.f_add_(histogram)?;
        } else {
            let _ = var.f_sub_(histogram)?;
        }
        Ok(())
    }

    /// `log(max(n_j, 1))` for the first `num_classes` counters, in `kind`.
    pub(crate) fn log_counts(&self, num_classes: i64, kind: Kind) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        Ok(self
            .var
            .f_narrow(0, 0, num_classes)?
            .f_to_kind(kind)?
            .f_clamp_min(1.0)?
            .f_log()?)
    }
}
