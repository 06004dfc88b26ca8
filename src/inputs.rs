//! Checks of a call's tensors. Everything here runs before the counts change,
//! so an error leaves the loss's state as it was.

use tch::{Device, Kind, Tensor};

use crate::config::{Head, Reduction, SeesawConfig};
use crate::error::{Error, Result};

/// The floating kinds accepted for scores; the loss is computed in
/// [`compute_kind`].
pub(crate) fn is_score_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// f64 scores are computed and returned in f64; f32, f16 and bf16 in f32.
pub(crate) fn compute_kind(score_kind: Kind) -> Kind {
    if score_kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Checks that `cls_score` is a 2-D floating tensor of the head's width and
/// returns its number of rows.
pub(crate) fn check_scores(config: &SeesawConfig, cls_score: &Tensor) -> Result<i64> {
    let shape = cls_score.size();
    let width = config.cls_channels();
    let expected = match config.head() {
        Head::Detection => format!("[N, {width}] (C + 2 with C = {})", config.num_classes()),
        Head::Classification => format!("[N, {width}]"),
    };
    if shape.len() != 2 {
        return Err(Error::Shape(format!(
            "cls_score must be 2-D {expected}, got shape {shape:?}"
        )));
    }
    let kind = cls_score.kind();
    if !is_score_kind(kind) {
        return Err(Error::Dtype(format!(
            "cls_score must be f32, f64, f16 or bf16, got {kind:?}"
        )));
    }
    if shape[1] != width {
        return Err(Error::Shape(format!(
            "cls_score has {} columns but the {} head expects {expected}",
            shape[1],
            head_name(config)
        )));
    }
    Ok(shape[0])
}

fn head_name(config: &SeesawConfig) -> &'static str {
    match config.head() {
        Head::Detection => "detection",
        Head::Classification => "classification",
    }
}

/// Checks the kind, shape and device of `labels` and returns them as int64.
pub(crate) fn check_labels(labels: &Tensor, rows: i64, device: Device) -> Result<Tensor> {
    let kind = labels.kind();
    if !matches!(kind, Kind::Int64 | Kind::Int) {
        return Err(Error::Dtype(format!(
            "labels must hold integer class indices (int64 or int32), got {kind:?}"
        )));
    }
    let shape = labels.size();
    if shape.len() != 1 {
        return Err(Error::Shape(format!("labels must be 1-D [N], got shape {shape:?}")));
    }
    if shape[0] != rows {
        return Err(Error::Shape(format!(
            "labels has {} entries but cls_score has {rows} rows",
            shape[0]
        )));
    }
    check_device("labels", labels.device(), device)?;
    Ok(if kind == Kind::Int64 {
        labels.shallow_clone()
    } else {
        labels.f_to_kind(Kind::Int64)?
    })
}

/// Checks `label_weights` and returns them in `kind`, detached: weights are
/// constants of the loss, as in the Python references (`label_weights.float()`).
pub(crate) fn check_weights(weights: Option<&Tensor>, rows: i64, device: Device, kind: Kind) -> Result<Option<Tensor>> {
    let Some(weights) = weights else { return Ok(None) };
    let wkind = weights.kind();
    if !is_score_kind(wkind) {
        return Err(Error::Dtype(format!(
            "label_weights must be floating (f32, f64, f16 or bf16), got {wkind:?}"
        )));
    }
    let shape = weights.size();
    if shape.len() != 1 || shape[0] != rows {
        return Err(Error::Shape(format!(
            "label_weights must have shape [{rows}] (one weight per cls_score row), got {shape:?}"
        )));
    }
    check_device("label_weights", weights.device(), device)?;
    let weights = weights.detach();
    Ok(Some(if wkind == kind {
        weights
    } else {
        weights.f_to_kind(kind)?
    }))
}

/// `avg_factor` only makes sense with a mean, as in mmdetection's
/// `weight_reduce_loss` (with `None` it is ignored).
pub(crate) fn check_reduction(reduction: Reduction, avg_factor: Option<f64>) -> Result<()> {
    if let (Reduction::Sum, Some(avg)) = (reduction, avg_factor) {
        return Err(Error::AvgFactor(format!(
            "avg_factor ({avg}) cannot be used with Reduction::Sum; use Reduction::Mean"
        )));
    }
    Ok(())
}

pub(crate) fn check_device(what: &str, got: Device, expected: Device) -> Result<()> {
    if got != expected {
        return Err(Error::Device(format!(
            "{what} is on {got:?} but cls_score is on {expected:?}; all tensors of a call must be on one device"
        )));
    }
    Ok(())
}

/// What one device-to-host read says about the data of a call.
pub(crate) struct DataReport {
    /// Smallest and largest label, `None` when there are no rows.
    pub label_range: Option<(i64, i64)>,
    /// Whether any counter is not a count: NaN, infinite, fractional,
    /// negative, or within this batch of int64's limit.
    pub bad_counts: bool,
    /// Whether any weight is NaN or infinite.
    pub bad_weights: bool,
}

/// Reads the label range, the health of the counts and of the weights in a
/// single transfer: the host round trip of an immediate check, which turns
/// bad labels, weights and corrupt checkpoints into errors before anything
/// changes. Without `counts` (calls that do not touch them) or `weights`,
/// those are not read.
pub(crate) fn inspect(labels: &Tensor, counts: Option<&Tensor>, weights: Option<&Tensor>) -> Result<DataReport> {
    let _guard = tch::no_grad_guard();
    // Few operations: at small N each one's dispatch costs more than its work.
    // Fallible ones: a libtorch failure (out of memory) is an error.
    let mut parts = Vec::with_capacity(4);
    let has_rows = labels.numel() > 0;
    if has_rows {
        let (lo, hi) = labels.f_aminmax(None, false)?;
        parts.push(lo.f_view([1])?);
        parts.push(hi.f_view([1])?);
    }
    let weights = weights.filter(|w| w.numel() > 0);
    if let Some(w) = weights {
        let bad = w.f_isfinite()?.f_logical_not()?.f_any()?;
        parts.push(bad.f_to_kind(Kind::Int64)?.f_view([1])?);
    }
    // The last part flags counts that are not counts: negative, or so large
    // that this batch could overflow int64; floating ones (a checkpoint's)
    // also when not finite or not whole.
    let counts = counts.filter(|c| c.numel() > 0);
    if let Some(counts) = counts {
        let limit = i64::MAX - labels.numel() as i64;
        let mut bad = counts.f_lt(0)?.f_logical_or(&counts.f_gt(limit)?)?;
        if counts.is_floating_point() {
            let fraction = counts.f_sub(&counts.f_round()?)?.f_abs()?;
            bad = bad
                .f_logical_or(&counts.f_isnan()?)?
                .f_logical_or(&counts.f_isinf()?)?
                .f_logical_or(&fraction.f_gt(1e-3)?)?;
        }
        parts.push(bad.f_any()?.f_to_kind(Kind::Int64)?.f_view([1])?);
    }
    if parts.is_empty() {
        return Ok(DataReport {
            label_range: None,
            bad_counts: false,
            bad_weights: false,
        });
    }
    crate::probe::host_read();
    let mut host = Tensor::f_cat(&parts, 0)?;
    if host.device() != Device::Cpu {
        host = host.f_to_device(Device::Cpu)?;
    }
    let values = Vec::<i64>::try_from(&host)?;
    let label_range = has_rows.then(|| (values[0], values[1]));
    let weights_at = if has_rows { 2 } else { 0 };
    let bad_weights = weights.is_some() && values[weights_at] != 0;
    let bad_counts = counts.is_some() && values[values.len() - 1] != 0;
    Ok(DataReport {
        label_range,
        bad_counts,
        bad_weights,
    })
}

/// The largest label the head takes and the allowed range as text: `[0, C]`
/// for detection (C is background), `[0, C)` for classification.
pub(crate) fn label_bounds(config: &SeesawConfig) -> (i64, String) {
    let c = config.num_classes();
    match config.head() {
        Head::Detection => (c, format!("[0, {c}] ({c} = background)")),
        Head::Classification => (c - 1, format!("[0, {c})")),
    }
}

/// Checks the label range against the head.
pub(crate) fn check_label_range(config: &SeesawConfig, range: Option<(i64, i64)>) -> Result<()> {
    let Some((lo, hi)) = range else { return Ok(()) };
    let (max_ok, allowed) = label_bounds(config);
    let bad = if lo < 0 {
        lo
    } else if hi > max_ok {
        hi
    } else {
        return Ok(());
    };
    Err(Error::Label {
        row: None,
        label: bad,
        allowed,
        earlier_call: false,
    })
}
