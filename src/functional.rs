//! The functional form, for callers who keep their own counts: the shape of
//! the Python references' `seesaw_ce_loss`.

use tch::{Kind, Tensor};

use crate::call::Call;
use crate::config::{Reduction, SeesawConfig};
use crate::error::{Error, Result};
use crate::params::SeesawParams;
use crate::{fused, inputs, reference};

/// Seesaw cross-entropy of `cls_score` `[N, C]` for `labels` `[N]` in
/// `[0, C)`, with per-class counts `cum_samples` `[C]` (any numeric kind,
/// finite and non-negative; they are read, never changed). `label_weights`,
/// `reduction` and `avg_factor` behave as in
/// [`SeesawLoss::forward_with_reduction`](crate::SeesawLoss::forward_with_reduction).
/// Takes the fused path where one exists for the scores' device and kind.
///
/// ```
/// use seesaw_loss::{seesaw_ce_loss, Reduction};
/// use tch::{Kind, Tensor};
/// let scores = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
/// let labels = Tensor::from_slice(&[0i64, 2]);
/// let counts = Tensor::from_slice(&[10i64, 10, 10]);
/// let loss = seesaw_ce_loss(&scores, &labels, None, &counts, 0.8, 2.0, 1e-2, Reduction::Mean, None)?;
/// // Equal counts and uniform scores: both factors are 1, plain cross-entropy.
/// assert!((loss.double_value(&[]) - 3f64.ln()).abs() < 1e-6);
/// # Ok::<(), anyhow::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn seesaw_ce_loss(
    cls_score: &Tensor,
    labels: &Tensor,
    label_weights: Option<&Tensor>,
    cum_samples: &Tensor,
    p: f64,
    q: f64,
    eps: f64,
    reduction: Reduction,
    avg_factor: Option<f64>,
) -> Result<Tensor> {
    let shape = cls_score.size();
    if shape.len() != 2 {
        return Err(Error::Shape(format!(
            "cls_score must be 2-D [N, C], got shape {shape:?}"
        )));
    }
    let config = SeesawConfig::classification(shape[1]).p(p).q(q).eps(eps);
    config.validate()?;
    let rows = inputs::check_scores(&config, cls_score)?;
    let device = cls_score.device();
    let labels = inputs::check_labels(labels, rows, device)?;
    let compute_kind = inputs::compute_kind(cls_score.kind());
    let weights = inputs::check_weights(label_weights, rows, device, compute_kind)?;
    inputs::check_reduction(reduction, avg_factor)?;
    if cum_samples.size() != [shape[1]] {
        return Err(Error::Counts(format!(
            "cum_samples must have shape [{}] (one count per class), got {:?}",
            shape[1],
            cum_samples.size()
        )));
    }
    if matches!(
        cum_samples.kind(),
        Kind::Bool | Kind::ComplexFloat | Kind::ComplexDouble
    ) {
        return Err(Error::Counts(format!(
            "cum_samples must be numeric, got {:?}",
            cum_samples.kind()
        )));
    }
    inputs::check_device("cum_samples", cum_samples.device(), device)?;
    let report = inputs::inspect(&labels, Some(cum_samples), weights.as_ref())?;
    inputs::check_label_range(&config, report.label_range)?;
    if report.bad_counts {
        return Err(Error::Counts(
            "cum_samples holds NaN, infinite, fractional or negative counts".into(),
        ));
    }
    if report.bad_weights {
        return Err(Error::Weight {
            row: None,
            earlier_call: false,
        });
    }
    let log_counts = cum_samples.detach().to_kind(compute_kind).clamp_min(1.0).log();
    let fused = fused::unsupported(device, cls_score.kind()).is_none();
    // The checks above stand for the fused paths' prepare step, which this
    // form skips (it counts nothing): a good batch whose rows are all
    // positive.
    let state = fused.then(|| fused::good_batch_state(rows, device)).transpose()?;
    let params = SeesawParams::new(&config, &cls_score.size(), reduction, avg_factor);
    let log_counts = if fused {
        fused::class_table(log_counts.f_to_kind(tch::Kind::Float)?, params.p)?
    } else {
        log_counts
    };
    let call = Call::new(&config, params, cls_score, labels, weights, log_counts, state);
    let parts = if fused {
        fused::forward(&call)?
    } else {
        reference::forward(&call)?
    };
    Ok(parts.classes)
}
