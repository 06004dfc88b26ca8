//! The fused paths: one pass per row computes the loss and the gradient
//! together ([`crate::math`]). [`cpu`] runs the row algorithm on CPU threads;
//! [`cuda`] launches `kernels/seesaw.cu` through cudarc.
//!
//! Both produce [`RowOutputs`]; [`assemble`] turns them into the loss's
//! outputs with autograd attached through a surrogate term whose gradient is
//! the precomputed one.

pub(crate) mod cpu;
pub mod cuda;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Head, Reduction};

/// What a fused pass writes.
pub(crate) struct RowOutputs {
    /// `[N]` f32, unweighted class loss per row; 0 for background rows.
    pub class_loss: Tensor,
    /// `[N]` f32, unweighted objectness loss per row (detection only).
    pub objectness_loss: Option<Tensor>,
    /// `[N, W]` in the scores' kind: `weight_r * loss_weight * d loss_r / d z`,
    /// class and objectness columns together.
    pub grad: Tensor,
}

/// Why the fused path cannot take a call, or `None` when it can.
pub(crate) fn unsupported(scores: &Tensor) -> Option<String> {
    let kind = scores.kind();
    if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Some(format!(
            "the fused path computes f32, f16 and bf16 scores, got {kind:?}; use Backend::Reference (or Auto) for f64"
        ));
    }
    match scores.device() {
        Device::Cpu => None,
        Device::Cuda(_) => cuda::unavailable_reason(),
        other => Some(format!("no fused path for scores on {other:?}")),
    }
}

/// Runs the fused pass for the scores' device and assembles the outputs.
pub(crate) fn forward(call: &Call) -> Result<Parts> {
    let rows = match call.scores.device() {
        Device::Cpu => cpu::rows(call)?,
        Device::Cuda(_) => cuda::rows(call)?,
        other => bail!("no fused path for scores on {other:?}"),
    };
    Ok(assemble(call, rows))
}

/// Builds the reduced outputs from per-row values and the gradient.
///
/// Each output row is `value_r + (l_r - detach(l_r))` with
/// `l_r = sum_j z_rj * G_rj`: its value is the fused loss and its gradient
/// with respect to the scores is `G` times whatever upstream gradient
/// autograd brings, for any reduction. The mean divisor is applied to the
/// reduced scalar, so the gradient tensor is never rescaled.
fn assemble(call: &Call, rows: RowOutputs) -> Parts {
    let kind = call.compute_kind;
    let c = call.num_classes;
    let product = &call.scores * &rows.grad;
    let link = |start: i64, len: i64| {
        let l = product.narrow(1, start, len).sum_dim_intlist(1, false, kind);
        &l - l.detach()
    };
    let scale = |loss: &Tensor| {
        let scaled = loss * call.loss_weight;
        match &call.weights {
            Some(w) => scaled * w,
            None => scaled,
        }
    };
    let classes_rows = scale(&rows.class_loss) + link(0, c);
    let classes = match call.head {
        Head::Classification => reduce_rows(classes_rows, call.reduction, call.avg_factor, None),
        Head::Detection => {
            let positive = call.labels.lt(c);
            if call.reduction == Reduction::None {
                // The one place a host read is forced: the output's length is
                // the number of positive rows.
                classes_rows.index_select(0, &positive.nonzero().squeeze_dim(1))
            } else {
                // Background rows hold 0 in both terms, so summing every row
                // is summing the positive ones.
                reduce_rows(classes_rows, call.reduction, call.avg_factor, Some(&positive))
            }
        }
    };
    let objectness = rows.objectness_loss.map(|loss| {
        let obj_rows = scale(&loss) + link(c, 2);
        reduce_rows(obj_rows, call.reduction, call.avg_factor, None)
    });
    Parts { classes, objectness }
}

/// Sum, mean or none over rows whose weights are already applied. `counted`
/// marks the rows a mean divides by (all rows when `None`); the count stays on
/// the device.
fn reduce_rows(rows: Tensor, reduction: Reduction, avg_factor: Option<f64>, counted: Option<&Tensor>) -> Tensor {
    match reduction {
        Reduction::None => rows,
        Reduction::Sum => rows.sum(rows.kind()),
        Reduction::Mean => {
            let sum = rows.sum(rows.kind());
            match (avg_factor, counted) {
                (Some(avg), _) => sum / (avg + f32::EPSILON as f64),
                (None, None) => sum / rows.size()[0].max(1) as f64,
                (None, Some(mask)) => sum / mask.sum(rows.kind()).clamp_min(1.0),
            }
        }
    }
}
