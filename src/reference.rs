//! The pure-libtorch path: the loss as plain tch operations with autograd
//! through them. It runs wherever libtorch runs and is what every fused path
//! is tested against.
//!
//! The class loss uses the log-space form derived in [`crate::math`]; no
//! C x C ratio matrix is built, so large label spaces fit in memory.

use tch::{Kind, Tensor};

use crate::call::{Call, Parts};
use crate::config::{Head, Reduction};

/// Per-row Seesaw cross-entropy of `logits` `[P, C]` (in the compute kind)
/// for `labels` `[P]`, with `log_counts` `[C]` = `log(max(n, 1))`.
/// Gradients flow through `logits` only; both factors are built from detached
/// values (mmdetection computes them under no_grad).
pub(crate) fn seesaw_rows(logits: &Tensor, labels: &Tensor, log_counts: &Tensor, p: f64, q: f64, eps: f64) -> Tensor {
    let label_col = labels.unsqueeze(1);
    let mut adjustment = logits.zeros_like().detach();
    if p > 0.0 {
        // log M_ij = min(0, p (log n_j - log n_i))
        let own = log_counts.index_select(0, labels).unsqueeze(1);
        adjustment += (log_counts.unsqueeze(0) - own).multiply_scalar(p).clamp_max(0.0);
    }
    if q > 0.0 {
        // log C_ij = max(0, q (log s_j - max(log s_i, log eps)))
        let log_scores = logits.detach().log_softmax(1, logits.kind());
        let own = log_scores.gather(1, &label_col, false).clamp_min(eps.ln());
        adjustment += (log_scores - own).multiply_scalar(q).clamp_min(0.0);
    }
    // The label's own logit is never adjusted.
    let adjustment = adjustment.scatter_value(1, &label_col, 0.0);
    let adjusted = logits + adjustment;
    adjusted.logsumexp([1], false) - logits.gather(1, &label_col, false).squeeze_dim(1)
}

/// Per-row 2-way cross-entropy of the objectness logits `[N, 2]`: target 0
/// (column C, foreground) for positive rows, 1 (column C+1) for background.
pub(crate) fn objectness_rows(logits: &Tensor, is_background: &Tensor) -> Tensor {
    let target = is_background.to_kind(Kind::Int64).unsqueeze(1);
    logits
        .log_softmax(1, logits.kind())
        .gather(1, &target, false)
        .squeeze_dim(1)
        .neg()
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
) -> Tensor {
    let rows = match weights {
        Some(w) => rows * w,
        None => rows,
    };
    let reduced = match reduction {
        Reduction::None => rows,
        Reduction::Sum => rows.sum(rows.kind()),
        Reduction::Mean => {
            let divisor = mean_divisor(rows.size()[0], avg_factor);
            rows.sum(rows.kind()) / divisor
        }
    };
    reduced * loss_weight
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
pub(crate) fn forward(call: &Call) -> Parts {
    let x = call.scores.to_kind(call.compute_kind);
    let c = call.num_classes();
    let class_logits = match call.head() {
        Head::Detection => x.narrow(1, 0, c),
        Head::Classification => x.shallow_clone(),
    };
    let (logits, labels, weights) = match call.head() {
        Head::Detection => {
            let positive = call.labels.lt(c).nonzero().squeeze_dim(1);
            (
                class_logits.index_select(0, &positive),
                call.labels.index_select(0, &positive),
                call.weights.as_ref().map(|w| w.index_select(0, &positive)),
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
    );
    let classes = reduce(
        rows,
        weights.as_ref(),
        call.reduction(),
        call.avg_factor(),
        call.exact.loss_weight,
    );
    let objectness = (call.head() == Head::Detection).then(|| {
        let rows = objectness_rows(&x.narrow(1, c, 2), &call.labels.eq(c));
        reduce(
            rows,
            call.weights.as_ref(),
            call.reduction(),
            call.avg_factor(),
            call.exact.loss_weight,
        )
    });
    Parts { classes, objectness }
}
