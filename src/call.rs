//! One validated call of the loss, as the backends receive it.

use tch::{Kind, Tensor};

use crate::config::{Head, Reduction, SeesawConfig};
use crate::params::SeesawParams;

/// The Seesaw constants as configured, in f64: what the reference path
/// computes with. The fused paths compute in f32 from [`Call::params`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exact {
    pub p: f64,
    pub q: f64,
    pub eps: f64,
    pub loss_weight: f64,
}

/// Everything a backend needs for one call. Built by
/// [`SeesawLoss`](crate::SeesawLoss) after validation and after the counts
/// took the current batch in.
pub(crate) struct Call {
    /// `cls_score` as the caller gave it: gradients flow back through it.
    pub scores: Tensor,
    /// `[N]` int64, checked to be in range for the head.
    pub labels: Tensor,
    /// `[N]` in the compute kind, detached.
    pub weights: Option<Tensor>,
    /// The class table: `[C]` `log(max(n, 1))` in the compute kind (f32 on
    /// the CPU mirror), or on the kernels `[2, C]` f32 with `n^p` after it
    /// (kernels/seesaw.cu, "the class table").
    pub log_counts: Tensor,
    /// The fused paths' call state (`[STATE_LEN]` int64 on the scores'
    /// device, `kernels/seesaw_params.h`): whether the batch is bad and the
    /// positive rows. `None` on the reference path.
    pub state: Option<Tensor>,
    pub compute_kind: Kind,
    /// Head, shape, reduction and the constants in f32, as the kernels and
    /// the autograd node take them.
    pub params: SeesawParams,
    pub exact: Exact,
}

impl Call {
    /// A validated call under `config`, with its parameter block.
    pub(crate) fn new(
        config: &SeesawConfig,
        params: SeesawParams,
        scores: &Tensor,
        labels: Tensor,
        weights: Option<Tensor>,
        log_counts: Tensor,
        state: Option<Tensor>,
    ) -> Call {
        Call {
            // The configuration's f64 values, not the block's f32 ones.
            exact: Exact {
                p: config.p,
                q: config.q,
                eps: config.eps,
                loss_weight: config.loss_weight,
            },
            ..Call::from_params(params, scores.shallow_clone(), labels, weights, log_counts, state)
        }
    }

    pub(crate) fn head(&self) -> Head {
        self.params.head()
    }

    pub(crate) fn num_classes(&self) -> i64 {
        self.params.classes as i64
    }

    pub(crate) fn reduction(&self) -> Reduction {
        self.params.reduction()
    }

    pub(crate) fn avg_factor(&self) -> Option<f64> {
        self.params.avg_factor()
    }

    /// The call the autograd node rebuilds from what it kept: the fused
    /// paths read only `params`, so `exact` is `params` widened.
    pub(crate) fn from_params(
        params: SeesawParams,
        scores: Tensor,
        labels: Tensor,
        weights: Option<Tensor>,
        log_counts: Tensor,
        state: Option<Tensor>,
    ) -> Call {
        Call {
            compute_kind: crate::inputs::compute_kind(scores.kind()),
            scores,
            labels,
            weights,
            log_counts,
            state,
            exact: Exact {
                p: params.p as f64,
                q: params.q as f64,
                eps: (params.log_eps as f64).exp(),
                loss_weight: params.loss_weight as f64,
            },
            params,
        }
    }

    /// The same call on other scores (same shape and device).
    pub(crate) fn with_scores(&self, scores: Tensor) -> Call {
        Call {
            scores,
            labels: self.labels.shallow_clone(),
            weights: self.weights.as_ref().map(Tensor::shallow_clone),
            log_counts: self.log_counts.shallow_clone(),
            state: self.state.as_ref().map(Tensor::shallow_clone),
            compute_kind: self.compute_kind,
            params: self.params,
            exact: self.exact,
        }
    }
}

/// The two parts of the loss, reduced.
pub(crate) struct Parts {
    pub classes: Tensor,
    pub objectness: Option<Tensor>,
}
