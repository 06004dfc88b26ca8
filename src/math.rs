//! The row algorithm of the fused paths, written once for the CPU mirror,
//! which runs it as is. The CUDA kernels (`kernels/seesaw.cu`) compute the
//! same quantities with the same shifts; they differ in how a row is
//! traversed (a warp or a block of threads, the row held in registers) and in
//! their exponentials (one `exp2` per logit, with an `n^p` table for the
//! mitigation, where the mirror uses `exp` and a table relative to the
//! largest count), so the two agree to f32 rounding, not bit for bit. The
//! kernels' own mapping of this math is in `docs/kernels.md`.
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
//!
//! # Passes and what is kept between them
//!
//! A row is split into a loss part ([`class_forward`]: `lse` and
//! `logsumexp(z')`, which it returns as [`RowStats`]) and a gradient part
//! ([`class_grad`]: recomputes `z'` from the logits and the stats and writes
//! `scale * (softmax(z') - onehot)`). The autograd node runs them in forward
//! and backward, keeping only the two stats per row in between;
//! `forward_backward` runs them back to back on a row that is still in cache.
//!
//! # Shifts instead of an online maximum
//!
//! `lse` takes the row maximum `m` first (one vectorizable pass), then sums
//! `exp(z - m)`. `logsumexp(z')` needs no maximum pass: every adjusted logit
//! satisfies `z'_j - lse <= q * max(0, (m - lse) - rel_self)`, because
//! `z_j - lse <= 0`, `log M_j <= 0` and `log C_j` grows with `z_j`. Summing
//! `exp(z'_j - shift)` with `shift = lse + that bound` can therefore never
//! overflow; it could only underflow if every term were below f32's range
//! (mitigation exponents far beyond the defaults), and then the row is summed
//! again against its exact maximum. The kernels' exact way does the same per
//! row; their held way, which works with products instead, hands a row whose
//! sum falls below `SEESAW_HELD_UNDERFLOW` to the exact way.
//!
//! # The CPU loss pass with one exponential per logit
//!
//! On the CPU the exponentials are the cost, so [`class_forward_powered`]
//! evaluates the same `logsumexp(z')` with one `exp` per logit instead of
//! two. Writing `e_j = exp(z_j - m)` (kept from the `lse` pass),
//!
//! ```text
//! exp(z'_j - m) = e_j * M_j * C_j
//! M_j = min(1, P_j / P_y),  P_j = exp(p (log n_j - max log n))   (per call)
//! C_j = max(1, (e_j * exp(m - threshold))^q)                       (q in {0, 1, 2})
//! ```
//!
//! so `logsumexp(z') = m + log(e_y + sum_{j != y} e_j M_j C_j)`, all products.
//! [`PoweredCounts::new`] takes this path only where nothing can overflow or
//! underflow: `q` in {0, 1, 2}, `q * -log(eps) <= 60` (so `C_j <= e^60`) and
//! `p * (max log n - min log n) <= 60` (so `M_j >= e^-60`); the defaults
//! qualify. Other calls use [`class_forward`].

use crate::params::{SeesawParams, UNDERFLOW};

/// What the loss pass of a class row keeps for its gradient pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RowStats {
    /// `logsumexp(z)`.
    pub lse: f32,
    /// `logsumexp(z')`.
    pub lse_adjusted: f32,
}

impl RowStats {
    /// What rows without a class loss (background, unchecked labels) keep.
    pub(crate) const NAN: RowStats = RowStats {
        lse: f32::NAN,
        lse_adjusted: f32::NAN,
    };
}

/// Lanes of the chunked loops below: wide enough for two AVX2 registers, so
/// the compiler turns each chunk into vector code.
const LANES: usize = 16;

/// `e^x` in f32 without a libm call, so that loops over it vectorize: Cody-Waite
/// reduction `x = k ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6 polynomial for
/// `e^r` (Cephes' `expf` coefficients, about 1 ulp), and `2^k` built in the
/// exponent bits. Rounding to `k` adds and subtracts 1.5 * 2^23, which leaves
/// `k` in the low mantissa bits. `e^x = 0` below -87.3 (f32's normal range),
/// NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.336_55;
    const HIGH: f32 = 88.0;
    let clamped = x.clamp(LOW, HIGH); // NaN stays NaN
    let t = clamped * LOG2E + ROUND;
    let k = t - ROUND;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65)
        * r
        + 0.5;
    let e_r = poly * r * r + r + 1.0;
    let two_k = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < LOW {
        0.0
    } else {
        e_r * two_k
    }
}

#[inline(always)]
fn max0(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// A loss the rounding took below its exact bound of 0, as 0; NaN stays
/// NaN. The label's own term is in `logsumexp(z')`, so the exact class loss
/// is never negative.
#[inline(always)]
fn non_negative(loss: f32) -> f32 {
    if loss < 0.0 {
        0.0
    } else {
        loss
    }
}

#[inline(always)]
fn min0(x: f32) -> f32 {
    if x < 0.0 {
        x
    } else {
        0.0
    }
}

/// The largest element; NaNs are skipped (they reach the sums instead), and
/// an empty or all `-inf` row gives `-inf`.
#[inline(always)]
fn max(z: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = z.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = if v > *a { v } else { *a };
        }
    }
    rest.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `sum_j exp(f(z_j, w_j) - shift)` over two equally long slices, in
/// `LANES` partial sums.
#[inline(always)]
fn sum_exp(z: &[f32], w: &[f32], shift: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = z.chunks_exact(LANES).zip(w.chunks_exact(LANES));
    let rest = z.len() - z.len() % LANES;
    for (cz, cw) in chunks {
        for ((a, &zj), &wj) in acc.iter_mut().zip(cz).zip(cw) {
            *a += exp(f(zj, wj) - shift);
        }
    }
    let tail: f32 = z[rest..]
        .iter()
        .zip(&w[rest..])
        .map(|(&zj, &wj)| exp(f(zj, wj) - shift))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `log M_j + log C_j` for the negatives of one row: `p min(0, log n_j - log
/// n_y) + q max(0, (z_j - lse) - rel_self)`. Written as `p min(0, .)` rather
/// than `min(0, p .)` so that `q = 0` stays 0 against a `-inf` logit.
#[derive(Clone, Copy, Debug)]
struct Adjustment {
    p: f32,
    q: f32,
    log_n_y: f32,
    /// `lse + rel_self`: `z_j` is compared with it directly.
    threshold: f32,
}

impl Adjustment {
    #[inline(always)]
    fn new(params: &SeesawParams, lse: f32, z_y: f32, log_n_y: f32) -> Self {
        let rel_self = z_y - lse;
        let rel_self = if rel_self > params.log_eps {
            rel_self
        } else {
            params.log_eps
        };
        Adjustment {
            p: params.p,
            q: params.q,
            log_n_y,
            threshold: lse + rel_self,
        }
    }

    /// `z'_j` of a negative class.
    #[inline(always)]
    fn adjusted(&self, z_j: f32, log_n_j: f32) -> f32 {
        z_j + self.p * min0(log_n_j - self.log_n_y) + self.q * max0(z_j - self.threshold)
    }
}

/// `sum_j exp(z'_j - shift)` of a row: the negatives on either side of the
/// label, then the label's own term. A function rather than a closure so that
/// it is always inlined into the vector-compiled caller.
#[inline(always)]
fn adjusted_sum(adj: &Adjustment, z: &[f32], label: usize, log_counts: &[f32], shift: f32) -> f32 {
    let below = sum_exp(&z[..label], &log_counts[..label], shift, |zj, nj| adj.adjusted(zj, nj));
    let above = sum_exp(&z[label + 1..], &log_counts[label + 1..], shift, |zj, nj| {
        adj.adjusted(zj, nj)
    });
    below + above + exp(z[label] - shift)
}

/// Loss pass of a class row: returns the unweighted loss and the row's
/// stats. `label` must be in `[0, z.len())`, `log_counts` as long as `z`.
#[inline(always)]
pub(crate) fn class_forward(params: &SeesawParams, z: &[f32], label: usize, log_counts: &[f32]) -> (f32, RowStats) {
    let m = max(z);
    let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
    let lse = m + sum_exp(z, z, m, |zj, _| zj).ln();
    let z_y = z[label];
    let adj = Adjustment::new(params, lse, z_y, log_counts[label]);
    let mut shift = lse + params.q * max0(m - adj.threshold);
    let mut sum = adjusted_sum(&adj, z, label, log_counts, shift);
    if sum < UNDERFLOW {
        // Only with extreme exponents: sum again against the exact maximum.
        let exact = z
            .iter()
            .zip(log_counts)
            .enumerate()
            .map(|(j, (&zj, &nj))| if j == label { zj } else { adj.adjusted(zj, nj) })
            .fold(f32::NEG_INFINITY, f32::max);
        if exact > f32::NEG_INFINITY {
            shift = exact;
            sum = adjusted_sum(&adj, z, label, log_counts, shift);
        }
    }
    let lse_adjusted = shift + sum.ln();
    (non_negative(lse_adjusted - z_y), RowStats { lse, lse_adjusted })
}

/// Per-call constants of [`class_forward_powered`]: `P_j` for every class and
/// how to raise to `q`.
pub(crate) struct PoweredCounts {
    powered: Vec<f32>,
    q: PowerOfQ,
}

#[derive(Clone, Copy)]
enum PowerOfQ {
    Zero,
    One,
    Two,
}

impl PoweredCounts {
    /// `None` when the call's exponents leave the safe range (module
    /// documentation); the caller then uses [`class_forward`].
    pub(crate) fn new(params: &SeesawParams, log_counts: &[f32]) -> Option<PoweredCounts> {
        const LIMIT: f32 = 60.0;
        let q = if params.q == 0.0 {
            PowerOfQ::Zero
        } else if params.q == 1.0 {
            PowerOfQ::One
        } else if params.q == 2.0 {
            PowerOfQ::Two
        } else {
            return None;
        };
        if params.q * -params.log_eps > LIMIT {
            return None;
        }
        let hi = log_counts.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lo = log_counts.iter().cloned().fold(f32::INFINITY, f32::min);
        let spread = params.p * (hi - lo);
        if spread.is_nan() || spread > LIMIT {
            return None;
        }
        // `exp` below rather than libm's: one vector loop over C, not C calls.
        let powered = log_counts.iter().map(|&l| exp(params.p * (l - hi))).collect();
        Some(PoweredCounts { powered, q })
    }
}

/// `sum_j e_j * min(1, P_j / P_y) * max(1, (e_j k)^q)` over two equally long
/// slices, in `LANES` partial sums.
#[inline(always)]
fn powered_sum(e: &[f32], powered: &[f32], inv_p_y: f32, k: f32, q: PowerOfQ) -> f32 {
    let term = |ej: f32, pj: f32| {
        let m = pj * inv_p_y;
        let m = if m < 1.0 { m } else { 1.0 };
        let c = match q {
            PowerOfQ::Zero => 1.0,
            PowerOfQ::One => ej * k,
            PowerOfQ::Two => (ej * k) * (ej * k),
        };
        let c = if c > 1.0 { c } else { 1.0 };
        ej * m * c
    };
    let mut acc = [0.0f32; LANES];
    let rest = e.len() - e.len() % LANES;
    for (ce, cp) in e.chunks_exact(LANES).zip(powered.chunks_exact(LANES)) {
        for ((a, &ej), &pj) in acc.iter_mut().zip(ce).zip(cp) {
            *a += term(ej, pj);
        }
    }
    let tail: f32 = e[rest..]
        .iter()
        .zip(&powered[rest..])
        .map(|(&ej, &pj)| term(ej, pj))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// [`class_forward`] with one exponential per logit (module documentation,
/// "The CPU loss pass with one exponential per logit"). `scratch` is at least
/// as long as `z`.
#[inline(always)]
pub(crate) fn class_forward_powered(
    params: &SeesawParams,
    powered: &PoweredCounts,
    z: &[f32],
    label: usize,
    scratch: &mut [f32],
) -> (f32, RowStats) {
    let m = max(z);
    let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
    let e = &mut scratch[..z.len()];
    let mut acc = [0.0f32; LANES];
    let rest = z.len() - z.len() % LANES;
    for (cz, ce) in z.chunks_exact(LANES).zip(e.chunks_exact_mut(LANES)) {
        for ((a, &zj), ej) in acc.iter_mut().zip(cz).zip(ce) {
            *ej = exp(zj - m);
            *a += *ej;
        }
    }
    let mut tail = 0.0;
    for (&zj, ej) in z[rest..].iter().zip(&mut e[rest..]) {
        *ej = exp(zj - m);
        tail += *ej;
    }
    let lse = m + (acc.iter().sum::<f32>() + tail).ln();
    let z_y = z[label];
    let adj = Adjustment::new(params, lse, z_y, 0.0);
    let k = exp(m - adj.threshold);
    let p = &powered.powered;
    let inv_p_y = 1.0 / p[label];
    let sum = powered_sum(&e[..label], &p[..label], inv_p_y, k, powered.q)
        + powered_sum(&e[label + 1..], &p[label + 1..], inv_p_y, k, powered.q)
        + e[label];
    let lse_adjusted = m + sum.ln();
    (non_negative(lse_adjusted - z_y), RowStats { lse, lse_adjusted })
}

/// Gradient pass of a class row: writes `scale * (softmax(z') - onehot(label))`
/// into `grad`, recomputing `z'` from the logits and the loss pass's stats.
#[inline(always)]
pub(crate) fn class_grad(
    params: &SeesawParams,
    z: &[f32],
    label: usize,
    log_counts: &[f32],
    stats: RowStats,
    scale: f32,
    grad: &mut [f32],
) {
    let z_y = z[label];
    let adj = Adjustment::new(params, stats.lse, z_y, log_counts[label]);
    let shift = stats.lse_adjusted;
    for ((g, &zj), &nj) in grad.iter_mut().zip(z).zip(log_counts) {
        *g = scale * exp(adj.adjusted(zj, nj) - shift);
    }
    grad[label] = scale * (exp(z_y - shift) - 1.0);
}

/// Objectness part of one detection row: 2-way cross-entropy of `(fg, bg)`
/// with target `background`; returns the loss and, when `grad` is given,
/// writes `scale * d loss / d (fg, bg)`.
#[inline(always)]
pub(crate) fn objectness_row(fg: f32, bg: f32, background: bool, grad: Option<(&mut [f32], f32)>) -> f32 {
    let m = fg.max(bg);
    let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
    let lse = m + ((fg - m).exp() + (bg - m).exp()).ln();
    let target = if background { bg } else { fg };
    if let Some((grad, scale)) = grad {
        grad[0] = scale * ((fg - lse).exp() - if background { 0.0 } else { 1.0 });
        grad[1] = scale * ((bg - lse).exp() - if background { 1.0 } else { 0.0 });
    }
    lse - target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_two_ulp_over_the_range() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn powered_loss_pass_matches_the_exponential_one() {
        let c = 1203;
        let log_counts: Vec<f32> = (0..c).map(|j| ((j * 7919) % 5000) as f32 * 0.003).collect();
        for (p, q) in [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (1.3, 1.0)] {
            let params = SeesawParams::constants(p, q, (1e-2f32).ln());
            let powered = PoweredCounts::new(&params, &log_counts).expect("safe exponents");
            let mut scratch = vec![0.0; c];
            for row in 0..50 {
                let z: Vec<f32> = (0..c).map(|j| ((j * 31 + row * 17) % 97) as f32 * 0.13 - 6.0).collect();
                let label = (row * 131) % c;
                let (a, sa) = class_forward(&params, &z, label, &log_counts);
                let (b, sb) = class_forward_powered(&params, &powered, &z, label, &mut scratch);
                assert!(
                    (a - b).abs() <= 2e-6 * a.abs().max(1.0),
                    "p {p} q {q} row {row}: {a} vs {b}"
                );
                assert!((sa.lse - sb.lse).abs() < 1e-5 && (sa.lse_adjusted - sb.lse_adjusted).abs() < 1e-5);
            }
        }
        let general = SeesawParams::constants(0.8, 1.5, (1e-2f32).ln());
        assert!(PoweredCounts::new(&general, &log_counts).is_none());
        let steep = SeesawParams::constants(9.0, 2.0, (1e-2f32).ln());
        assert!(PoweredCounts::new(&steep, &log_counts).is_none());
    }

    #[test]
    fn max_skips_nan_and_handles_short_rows() {
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        let long: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin()).collect();
        assert_eq!(max(&long), long.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
    }
}
