//! The row algorithm of the fused paths, written once. The CUDA kernel
//! (`kernels/seesaw.cu`) follows this module line for line; the CPU mirror
//! runs it as is.
//!
//! # Derivation
//!
//! For a row with label `y`, class logits `z` (length `C`) and counts `n`
//! (clamped to at least 1), the Python references compute
//!
//! ```text
//! s       = softmax(z)                       (detached)
//! M_j     = (n_j / n_y)^p   if n_j < n_y, else 1
//! C_j     = (s_j / max(s_y, eps))^q   if that ratio > 1, else 1
//! z'_j    = z_j + log(M_j C_j)   for j != y,   z'_y = z_y
//! loss    = cross_entropy(z', y) = logsumexp(z') - z_y
//! ```
//!
//! Taking logs removes every `pow`, division and the C x C ratio matrix:
//!
//! ```text
//! lse      = logsumexp(z)
//! log M_j  = min(0, p (log n_j - log n_y))
//! log C_j  = max(0, q ((z_j - lse) - max(z_y - lse, log eps)))
//! ```
//!
//! because `log s_j = z_j - lse` and `x^q > 1` exactly when `x > 1`. `M` and
//! `C` are constants of the graph (computed from detached values), so
//!
//! ```text
//! d loss / d z_j = softmax(z')_j - [j == y]
//! ```
//!
//! One row therefore needs two reductions (`lse`, then `logsumexp(z')`) and
//! one write of the gradient; the objectness pair of a detection row is a plain
//! 2-way cross-entropy on two more logits of the same row.
//!
//! Arithmetic is f32 whatever the storage kind; `log n` is computed once per
//! call (`Counts::log_counts`).

/// Constants of one call, shared by every row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowParams {
    pub p: f32,
    pub q: f32,
    pub log_eps: f32,
}

/// `log M_j + log C_j` for a negative class `j` of a row (the adjustment of
/// `z_j`). `rel_j = z_j - lse`, `rel_self = max(z_y - lse, log eps)`.
#[inline(always)]
pub(crate) fn adjustment(params: &RowParams, log_n_j: f32, log_n_y: f32, rel_j: f32, rel_self: f32) -> f32 {
    let mut a = 0.0f32;
    if params.p > 0.0 {
        a += (params.p * (log_n_j - log_n_y)).min(0.0);
    }
    if params.q > 0.0 {
        a += (params.q * (rel_j - rel_self)).max(0.0);
    }
    a
}

/// Running `(max, sum of exp(x - max))` of a stream of values: the online
/// logsumexp both fused paths use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OnlineLse {
    pub max: f32,
    pub sum: f32,
}

impl OnlineLse {
    pub(crate) const EMPTY: OnlineLse = OnlineLse {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    #[inline(always)]
    pub(crate) fn push(&mut self, x: f32) {
        if x > self.max {
            self.sum = self.sum * (self.max - x).exp() + 1.0;
            self.max = x;
        } else if x != f32::NEG_INFINITY {
            // Also the NaN path: a NaN x makes the sum NaN and the result NaN.
            // -inf contributes nothing (and would give exp(NaN) against a
            // -inf running max).
            self.sum += (x - self.max).exp();
        }
    }

    #[inline(always)]
    pub(crate) fn value(&self) -> f32 {
        self.max + self.sum.ln()
    }
}

/// Class part of one row: returns the loss and, when `grad` is given, writes
/// `scale * d loss / d z` into it. `label` must be in `[0, z.len())`.
pub(crate) fn class_row(
    params: &RowParams,
    z: &[f32],
    label: usize,
    log_counts: &[f32],
    grad: Option<(&mut [f32], f32)>,
) -> f32 {
    let mut first = OnlineLse::EMPTY;
    for &v in z {
        first.push(v);
    }
    let lse = first.value();
    let z_y = z[label];
    let rel_self = (z_y - lse).max(params.log_eps);
    let log_n_y = log_counts[label];
    let adjusted = |j: usize| -> f32 {
        if j == label {
            z_y
        } else {
            z[j] + adjustment(params, log_counts[j], log_n_y, z[j] - lse, rel_self)
        }
    };
    let mut second = OnlineLse::EMPTY;
    for j in 0..z.len() {
        second.push(adjusted(j));
    }
    let lse_adjusted = second.value();
    if let Some((grad, scale)) = grad {
        for (j, g) in grad.iter_mut().enumerate() {
            let softmax = (adjusted(j) - lse_adjusted).exp();
            *g = scale * (softmax - if j == label { 1.0 } else { 0.0 });
        }
    }
    lse_adjusted - z_y
}

/// Objectness part of one detection row: 2-way cross-entropy of
/// `(fg, bg)` with target `background`; writes `scale * d loss / d (fg, bg)`.
pub(crate) fn objectness_row(fg: f32, bg: f32, background: bool, grad: Option<(&mut [f32], f32)>) -> f32 {
    let mut lse = OnlineLse::EMPTY;
    lse.push(fg);
    lse.push(bg);
    let lse = lse.value();
    let target = if background { bg } else { fg };
    if let Some((grad, scale)) = grad {
        grad[0] = scale * ((fg - lse).exp() - if background { 0.0 } else { 1.0 });
        grad[1] = scale * ((bg - lse).exp() - if background { 1.0 } else { 0.0 });
    }
    lse - target
}
