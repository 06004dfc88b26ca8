//! The pure-libtorch path: the loss as plain tch operations with autograd
//! through them. It runs wherever libtorch runs and is what every fused path
//! is tested against.
//!
//! The class loss uses the log-space form derived in [`crate::math`]; no
//! C x C ratio matrix is built, so large label spaces fit in memory.

use tch::{Kind, TchError, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Head, Reduction};

// Every operation here is tch's fallible `f_` form: a libtorch failure
// (running out of memory included) comes back as an error, never a panic.
type Result<T> = std::result::Result<T, TchError>;

/// Per-row Seesaw cross-entropy of `logits` `[P, C]` (in the compute kind)
/// for `labels` `[P]`, with `log_counts` `[C]` = `log(max(n, 1))`.
/// Gradients flow through `logits` only; both factors are built from detached
/// values (mmdetection computes them under no_grad).
pub(crate) fn seesaw_rows(
    logits: &Tensor,
    labels: &Tensor,
    log_counts: &Tensor,
    p: f64,
    q: f64,
    eps: f64,
) -> Result<Tensor> {
    let label_col = labels.f_unsqueeze(1)?;
    let mut adjustment = logits.f_zeros_like()?.f_detach()?;
    if p > 0.0 {
        // log M_ij = min(0, p (log n_j - log n_i))
        let own = log_counts.f_index_select(0, labels)?.f_unsqueeze(1)?;
        let log_m = log_counts
            .f_unsqueeze(0)?
            .f_sub(&own)?
            .f_mul_scalar(p)?
            .f_clamp_max(0.0)?;
        adjustment = adjustment.f_add(&log_m)?;
    }
    if q > 0.0 {
        // log C_ij = max(0, q (log s_j - max(log s_i, log eps)))
        let log_scores = logits.f_detach()?.f_log_softmax(1, logits.kind())?;
        let own = log_scores.f_gather(1, &label_col, false)?.f_clamp_min(eps.ln())?;
        let log_c = log_scores.f_sub(&own)?.f_mul_scalar(q)?.f_clamp_min(0.0)?;
        adjustment = adjustment.f_add(&log_c)?;
    }
    // The label's own logit is never adjusted.
    let adjustment = adjustment.f_scatter_value(1, &label_col, 0.0)?;
    let adjusted = logits.f_add(&adjustment)?;
    let own_logit = logits.f_gather(1, &label_col, false)?.f_squeeze_dim(1)?;
    adjusted.f_logsumexp([1], false)?.f_sub(&own_logit)
}

/// Per-row 2-way cross-entropy of the objectness logits `[N, 2]`: target 0
/// (column C, foreground) for positive rows, 1 (column C+1) for background.
pub(crate) fn objectness_rows(logits: &Tensor, is_background: &Tensor) -> Result<Tensor> {
    let target = is_background.f_to_kind(Kind::Int64)?.f_unsqueeze(1)?;
    logits
        .f_log_softmax(1, logits.kind())?
        .f_gather(1, &target, false)?
        .f_squeeze_dim(1)?
        .f_neg()
}

/// mmdetection's `weight_reduce_loss` followed by `loss_weight`: weights
/// multiply the rows, then `None` keeps them, `Sum` adds them, `Mean` divides
/// the sum by the number of rows (0 rows give 0, not NaN) or by
/// `avg_factor + f32::EPSILON`.
pub(crate) fn reduce(
    rows: Tensor,
    weights: Option<&Tensor>,
    reduction: Reduction,
    avg_factor: Option<f64>,
    loss_weight: f64,
) -> Result<Tensor> {
    let rows = match weights {
        Some(w) => rows.f_mul(w)?,
        None => rows,
    };
    let reduced = match reduction {
        Reduction::None => rows,
        Reduction::Sum => rows.f_sum(rows.kind())?,
        Reduction::Mean => {
            let divisor = mean_divisor(rows.size()[0], avg_factor);
            rows.f_sum(rows.kind())?.f_div_scalar(divisor)?
        }
    };
    reduced.f_mul_scalar(loss_weight)
}

/// The divisor of a mean over `rows` rows: `avg_factor + f32::EPSILON`
/// when given (mmdetection's `weight_reduce_loss`), else the row count.
pub(crate) fn mean_divisor(rows: i64, avg_factor: Option<f64>) -> f64 {
    match avg_factor {
        Some(avg) => avg + f32::EPSILON as f64,
        None => rows.max(1) as f64,
    }
}

/// Both parts of the loss for one validated call.
pub(crate) fn forward(call: &Call) -> Result<Parts> {
    let x = if call.scores.kind() == call.compute_kind {
        call.scores.shallow_clone()
    } else {
        call.scores.f_to_kind(call.compute_kind)?
    };
    let c = call.num_classes();
    let class_logits = match call.head() {
        Head::Detection => x.f_narrow(1, 0, c)?,
        Head::Classification => x.shallow_clone(),
    };
    let (logits, labels, weights) = match call.head() {
        Head::Detection => {
            let positive = call.labels.f_lt(c)?.f_nonzero()?.f_squeeze_dim(1)?;
            (
                class_logits.f_index_select(0, &positive)?,
                call.labels.f_index_select(0, &positive)?,
                call.weights
                    .as_ref()
                    .map(|w| w.f_index_select(0, &positive))
                    .transpose()?,
            )
        }
        Head::Classification => (
            class_logits,
            call.labels.shallow_clone(),
            call.weights.as_ref().map(|w| w.shallow_clone()),
        ),
    };
    let rows = seesaw_rows(
        &logits,
        &labels,
        &call.log_counts,
        call.exact.p,
        call.exact.q,
        call.exact.eps,
    )?;
    let classes = reduce(
        rows,
        weights.as_ref(),
        call.reduction(),
        call.avg_factor(),
        call.exact.loss_weight,
    )?;
    let objectness = if call.head() == Head::Detection {
        let rows = objectness_rows(&x.f_narrow(1, c, 2)?, &call.labels.f_eq(c)?)?;
        Some(reduce(
            rows,
            call.weights.as_ref(),
            call.reduction(),
            call.avg_factor(),
            call.exact.loss_weight,
        )?)
    } else {
        None
    };
    Ok(Parts { classes, objectness })
}
