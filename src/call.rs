//! One validated call of the loss, as the backends receive it.

use tch::{Kind, Tensor};

use crate::config::{Head, Reduction};

/// Everything a backend needs for one call. Built by
/// [`SeesawLoss`](crate::SeesawLoss) after validation and after the counts
/// took the current batch in.
pub(crate) struct Call {
    pub head: Head,
    pub num_classes: i64,
    /// `cls_score` as the caller gave it: gradients flow back through it.
    pub scores: Tensor,
    /// `[N]` int64, checked to be in range for the head.
    pub labels: Tensor,
    /// `[N]` in the compute kind, detached.
    pub weights: Option<Tensor>,
    /// `[C]` `log(max(n, 1))` in the compute kind.
    pub log_counts: Tensor,
    pub compute_kind: Kind,
    pub p: f64,
    pub q: f64,
    pub eps: f64,
    pub loss_weight: f64,
    pub reduction: Reduction,
    pub avg_factor: Option<f64>,
    /// The detection head's positive rows (labels below `num_classes`), when
    /// the call's host read brought them; `None` leaves them to the device.
    pub positive_rows: Option<i64>,
}

impl Call {
    /// The same call on other scores (same shape and device).
    pub(crate) fn with_scores(&self, scores: Tensor) -> Call {
        Call {
            head: self.head,
            num_classes: self.num_classes,
            scores,
            labels: self.labels.shallow_clone(),
            weights: self.weights.as_ref().map(Tensor::shallow_clone),
            log_counts: self.log_counts.shallow_clone(),
            compute_kind: self.compute_kind,
            p: self.p,
            q: self.q,
            eps: self.eps,
            loss_weight: self.loss_weight,
            reduction: self.reduction,
            avg_factor: self.avg_factor,
            positive_rows: self.positive_rows,
        }
    }
}

/// The two parts of the loss, reduced.
pub(crate) struct Parts {
    pub classes: Tensor,
    pub objectness: Option<Tensor>,
}
