//! The row algorithm of the fused paths, written once for the CPU mirror,
//! which runs it as is. The CUDA kernels (`kernels/seesaw.cu`) compute the
//! same quantities with the same shifts; they differ in how a row is
//! traversed (a warp or a block of threads, the row held in registers) and in
//! their exponentials (the kernels' `exp2` is the GPU's approximate one,
//! the mirror's a polynomial in [`lanes`]), so the two agree to f32
//! rounding, not bit for bit. The
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
//! and backward, keeping only the three stats of [`RowStats`] per row in between;
//! `forward_backward` runs them back to back on a row that is still in cache.
//!
//! # Shifts instead of an online maximum
//!
//! `lse` takes the row maximum `m` first (one pass), then sums
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
//! # The CPU mirror: one exponential per logit and pass
//!
//! On the CPU the exponentials are the cost. The gradient pass
//! ([`class_grad`]) evaluates one per logit with the adjustments in the
//! exponent, as written above. The loss pass ([`class_forward_powered`])
//! works with products, as the kernels' held way does. With a per-row
//! `shift`, `e_j = exp(z_j - shift)` and a per-call table
//! `P_j = (n_j / n_max)^p`,
//!
//! ```text
//! exp(z'_j - shift) = e_j * M_j * C_j
//! M_j = min(P_j, P_y) / P_y
//! C_j = max(1, (e_j k)^q),   k = exp(shift - threshold)
//! threshold = lse + max(z_y - lse, log eps)
//! ```
//!
//! so that `logsumexp(z') = shift + log(sum_j e_j M_j C_j)` (`M_y = C_y = 1`,
//! as `threshold >= z_y`). One pass sums `e_j` and keeps it in a row buffer,
//! and a second pass over that buffer sums `e_j min(P_j, P_y) C_j` by
//! multiplication alone, divided by `P_y` once: one exponential per logit.
//! That pass takes each term `c^q` times its size, with `c = 1 / k`:
//! `c^q C_j = max(c, e_j)^q`, one maximum and no multiplication of its
//! own, and the sum is scaled back once.
//! The label's own term, `e_y`, is added apart, so that a confident row's
//! small loss is `ln_1p` of the others' sum, not the rounding of a sum near
//! 1.
//! With `lse = shift + log(sum_j e_j)`, `c = max(e_y, eps sum_j e_j)`: the
//! second pass, which needs `c` from its first step, waits on the first
//! pass's sum, not on a logarithm and an exponential.
//! Between the passes of a call the row stays in the core's L1 cache: the
//! CPU's counterpart of the kernels holding it in registers. When the caller
//! wants the gradient too (`forward_backward`), the second pass keeps its
//! terms in the gradient's row, and `softmax(z')_j` is each term over their
//! sum: no second exponential.
//!
//! The shift is the label's logit `z_y`, which needs no maximum pass, as
//! long as `sum_j e_j <= e^20`; a row whose label lies further below its
//! maximum (or holds a NaN) is summed again against the maximum `m`. Nothing
//! can overflow or underflow:
//!
//! - with `shift = z_y`, `e_j <= e^20` and `1 <= c <= e^20` (`eps <= 1`),
//!   so every term is at most `e_j max(c, e_j)^q <= e^60`, and `c^-q >=
//!   e^-40`; with `shift = m`, `e_j <= 1` and `eps <= c <= C`, so a term is
//!   at most `C^q` and `c^-q <= eps^-q`;
//! - the label's term is `P_y >= e^-60` (with `z_y` as the shift) and the
//!   maximum's at least `P_m >= e^-60` (with `m`), so the sum cannot vanish.
//!
//! [`PoweredCounts::new`] takes this path only for `q` in {0, 1, 2} (the
//! defaults use 2) and where these bounds hold: `q * -log(eps) <= 60` and
//! `p * max log n <= 60` (so `P_j >= e^-60`); the defaults qualify whatever
//! the counts (`log n <= 43.7` in int64). With `eps >= 1` no ratio `s_j /
//! max(s_y, eps)` exceeds 1, so no logit is compensated, and the path runs
//! with `q = 0`. Other calls use [`class_forward`], which adds the
//! adjustments in the exponent as the derivation above writes them.
//!
//! The vector loops are in [`lanes`], on the `pulp` crate: one generic body
//! compiled for each instruction set, the widest the processor has picked
//! at run time.

mod aligned;
mod ends;
mod lanes;

use crate::params::{SeesawParams, ROW_STATS, UNDERFLOW};
pub(crate) use aligned::LineAligned;
pub(crate) use ends::{Ended, Ends, RowEnd, GROUP};
/// The vector functions' accuracy check, for the callers' tests.
#[cfg(test)]
pub(crate) use lanes::tests::within;
pub(crate) use lanes::{dispatch, Ahead, Lines};
use lanes::{exp, ln_one, LaneMap};
use pulp::Simd;

/// What the loss pass of a class row keeps for its gradient pass: the
/// kernels' three row stats (`SEESAW_ROW_STATS`), in their order. The two
/// sums are kept relative to a shift near the row's top (its maximum `m`, or
/// the label's logit) so that the loss, and the label's gradient
/// `exp(-loss) - 1`, come from `(shift - z_y) + (lse' - shift)`: for a
/// confident row (a loss of 0.01 on logits of 3, say) both keep their own
/// precision, which `lse' - z_y` would round away at the logits' magnitude.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RowStats {
    /// The shift the sums are taken against: the row maximum `m` (0 for
    /// an all `-inf` row), or the label's logit where
    /// [`class_forward_powered`] could keep it.
    pub max: f32,
    /// `logsumexp(z) - max`.
    pub lse: f32,
    /// `logsumexp(z') - max`.
    pub adjusted: f32,
}

impl RowStats {
    /// What rows without a class loss (background, unchecked labels) keep.
    pub(crate) const NAN: RowStats = RowStats {
        max: f32::NAN,
        lse: f32::NAN,
        adjusted: f32::NAN,
    };

    /// The stats as the kernels' row of `[N, SEESAW_ROW_STATS]` holds them.
    pub(crate) fn to_array(self) -> [f32; ROW_STATS as usize] {
        [self.max, self.lse, self.adjusted]
    }

    pub(crate) fn from_array([max, lse, adjusted]: [f32; ROW_STATS as usize]) -> RowStats {
        RowStats { max, lse, adjusted }
    }

    /// The row's unweighted class loss `logsumexp(z') - z_y`, before the
    /// clamp at 0.
    pub(crate) fn loss(self, z_y: f32) -> f32 {
        (self.max - z_y) + self.adjusted
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

/// `log M_j + log C_j` for the negatives of one row: `p min(0, log n_j - log
/// n_y) + q max(0, (z_j - lse) - rel_self)`. Written as `p min(0, .)` rather
/// than `min(0, p .)` so that `q = 0` stays 0 against a `-inf` logit.
///
/// Everything is taken relative to the row's shift `base` (its stats'
/// `max`): the compensation starts at `base + threshold`, with `threshold =
/// max(z_y - base, lse - base + log eps)` (the same as `lse + rel_self`) a
/// number of the order of the row's spread. Added to `base` it would be
/// rounded at the logits' magnitude (1e-3 at logits of 1e4), and the loss
/// pass that works with products, whose `k` is `exp(-threshold)` to a
/// rounding, and the gradient pass would disagree by that much.
#[derive(Clone, Copy, Debug)]
struct Adjustment {
    p: f32,
    q: f32,
    log_n_y: f32,
    base: f32,
    /// Where the compensation starts, relative to `base`.
    threshold: f32,
}

impl Adjustment {
    /// For a row whose `lse` is `lse_rel` above `base`.
    #[inline(always)]
    fn new(params: &SeesawParams, base: f32, lse_rel: f32, z_y: f32, log_n_y: f32) -> Self {
        let label = z_y - base;
        let from_lse = lse_rel + params.log_eps;
        Adjustment {
            p: params.p,
            q: params.q,
            log_n_y,
            base,
            // `from_lse` when either is NaN, as `rel_self` was `log eps`.
            threshold: if label > from_lse { label } else { from_lse },
        }
    }

    /// `z'_j - base` per lane. The label's lane comes out as `z_y - base`:
    /// its mitigation is `p min(0, 0)` and its compensation `q max(0, (z_y -
    /// base) - threshold)` is 0, as `threshold >= z_y - base`. On
    /// [`pulp::Scalar`] this is the one-logit form.
    #[inline(always)]
    fn adjusted<S: Simd>(&self, simd: S, z: S::f32s, log_n: S::f32s) -> S::f32s {
        let zero = simd.splat_f32s(0.0);
        let u = lanes::minus(simd, z, self.base);
        let mitigation = simd.min_f32s(simd.sub_f32s(log_n, simd.splat_f32s(self.log_n_y)), zero);
        let compensation = lanes::above_zero(simd, simd.sub_f32s(u, simd.splat_f32s(self.threshold)));
        let adjusted = simd.mul_add_f32s(simd.splat_f32s(self.p), mitigation, u);
        simd.mul_add_f32s(simd.splat_f32s(self.q), compensation, adjusted)
    }
}

/// `scale * exp(z'_j - base - shift)` per lane, `z'` the adjusted logits of
/// an [`Adjustment`] and `w` the log-count table; the label's lane comes out
/// as `exp(z_y - base - shift)`.
#[derive(Clone, Copy)]
struct AdjustedExp {
    adj: Adjustment,
    shift: f32,
    scale: f32,
}

impl AdjustedExp {
    fn new(adj: Adjustment, shift: f32, scale: f32) -> Self {
        AdjustedExp { adj, shift, scale }
    }
}

impl<S: Simd> LaneMap<S> for AdjustedExp {
    #[inline(always)]
    fn apply(self, simd: S, z: S::f32s, log_n: S::f32s) -> S::f32s {
        let x = simd.sub_f32s(self.adj.adjusted(simd, z, log_n), simd.splat_f32s(self.shift));
        simd.mul_f32s(exp(simd, x), simd.splat_f32s(self.scale))
    }
}

/// `exp(z_j - shift)` per lane (the second slice is not read).
#[derive(Clone, Copy)]
struct ShiftedExp {
    shift: f32,
}

impl<S: Simd> LaneMap<S> for ShiftedExp {
    #[inline(always)]
    fn apply(self, simd: S, z: S::f32s, _: S::f32s) -> S::f32s {
        exp(simd, lanes::minus(simd, z, self.shift))
    }
}

/// `exp(z_j - shift)` per lane up to `LABEL_SHIFT_CAP`, at least
/// `exp(LABEL_SHIFT_CAP)` above it ([`lanes::exp_capped`]): [`ShiftedExp`]
/// for a shift that may lie below some logits (the label's), where [`exp`]
/// alone would be out of its range. A lane past the cap is above
/// `LABEL_SHIFT_LIMIT` by itself, so its row is summed again against its
/// maximum; so is a NaN.
#[derive(Clone, Copy)]
struct CappedExp {
    shift: f32,
}

/// The exponent at which [`CappedExp`] caps: above `ln LABEL_SHIFT_LIMIT`.
const LABEL_SHIFT_CAP: f32 = 21.0;

impl<S: Simd> LaneMap<S> for CappedExp {
    #[inline(always)]
    fn apply(self, simd: S, z: S::f32s, _: S::f32s) -> S::f32s {
        let x = lanes::minus(simd, z, self.shift);
        lanes::exp_capped(simd, x, LABEL_SHIFT_CAP)
    }
}

/// The row maximum `m`, with an all `-inf` (or empty) row's taken as 0 so
/// that the shifts stay finite.
#[inline(always)]
fn row_max<S: Simd>(simd: S, z: &[f32]) -> f32 {
    let m = lanes::max(simd, z);
    if m == f32::NEG_INFINITY {
        0.0
    } else {
        m
    }
}

/// Row maximum `m` and `lse - m`, asking for `ahead`'s cache lines as it
/// goes.
#[inline(always)]
fn max_and_lse<S: Simd>(simd: S, z: &[f32], ahead: Ahead) -> (f32, f32) {
    let m = row_max(simd, z);
    let total = lanes::sum(simd, ShiftedExp { shift: m }, z, z, ahead);
    (m, ln_one(total))
}

/// Loss pass of a class row: returns the unweighted loss and the row's
/// stats. `label` must be in `[0, z.len())`, `log_counts` as long as `z`.
/// `ahead` holds the rows the caller comes to next, whose cache lines the
/// pass asks for ([`Ahead`]).
#[inline(always)]
pub(crate) fn class_forward<S: Simd>(
    simd: S,
    params: &SeesawParams,
    z: &[f32],
    label: usize,
    log_counts: &[f32],
    ahead: Ahead,
) -> (f32, RowStats) {
    let (m, lse) = max_and_lse(simd, z, ahead);
    let z_y = z[label];
    let adj = Adjustment::new(params, m, lse, z_y, log_counts[label]);
    // Relative to `m`, as everything below.
    let mut shift = lse + params.q * max0(-adj.threshold);
    let mut sum = lanes::sum(simd, AdjustedExp::new(adj, shift, 1.0), z, log_counts, Ahead::NONE);
    if sum < UNDERFLOW {
        // Only with extreme exponents: sum again against the exact maximum.
        let one = pulp::Scalar::new();
        let exact = z
            .iter()
            .zip(log_counts)
            .map(|(&zj, &nj)| adj.adjusted(one, zj, nj))
            .fold(f32::NEG_INFINITY, f32::max);
        if exact > f32::NEG_INFINITY {
            shift = exact;
            sum = lanes::sum(simd, AdjustedExp::new(adj, shift, 1.0), z, log_counts, Ahead::NONE);
        }
    }
    let stats = RowStats {
        max: m,
        lse,
        adjusted: shift + ln_one(sum),
    };
    (non_negative(stats.loss(z_y)), stats)
}

/// Gradient pass of a class row: writes `scale * softmax(z')` into `grad`,
/// recomputing `z'` from the logits and the loss pass's stats, and asks for
/// `ahead`'s cache lines as [`class_forward`] does. The label's entry,
/// `scale * (softmax(z')_y - 1)`, is the row's end's to write
/// ([`Ended::label_grad`] of [`RowEnd::of_loss`] with `stats.loss(z_y)`):
/// from the loss rather than the sum, it keeps a confident row's small
/// gradient.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the row, its stats and the instruction set
pub(crate) fn class_grad<S: Simd>(
    simd: S,
    params: &SeesawParams,
    z: &[f32],
    label: usize,
    log_counts: &[f32],
    stats: RowStats,
    scale: f32,
    grad: &mut [f32],
    ahead: Ahead,
) {
    let adj = Adjustment::new(params, stats.max, stats.lse, z[label], log_counts[label]);
    lanes::store(
        simd,
        AdjustedExp::new(adj, stats.adjusted, scale),
        z,
        log_counts,
        grad,
        ahead,
    );
}

/// Per-call constants of [`class_forward_powered`]: `P_j = (n_j / n_max)^p`
/// for every class (in `[e^-LIMIT, 1]`), and `q`.
pub(crate) struct PoweredCounts {
    /// On a cache line, as the kept row it is read with.
    powered: LineAligned,
    q: SmallQ,
    /// `exp(log eps)`.
    eps: f32,
}

/// `q` in {0, 1, 2}: `c^q C_j = max(c, e_j)^q` by multiplication.
#[derive(Clone, Copy)]
enum SmallQ {
    Zero,
    One,
    Two,
}

impl SmallQ {
    /// `x^q`.
    fn power(self, x: f32) -> f32 {
        match self {
            SmallQ::Zero => 1.0,
            SmallQ::One => x,
            SmallQ::Two => x * x,
        }
    }
}

/// `exp(p * (log n_j - log n_max))` per lane.
#[derive(Clone, Copy)]
struct Power {
    p: f32,
    log_n_max: f32,
}

impl<S: Simd> LaneMap<S> for Power {
    #[inline(always)]
    fn apply(self, simd: S, log_n: S::f32s, _: S::f32s) -> S::f32s {
        let below_max = simd.sub_f32s(log_n, simd.splat_f32s(self.log_n_max));
        exp(simd, simd.mul_f32s(below_max, simd.splat_f32s(self.p)))
    }
}

/// `ln n` per lane (the log-count table's `ln(max(n, 1))`, from `max(n, 1)`).
#[derive(Clone, Copy)]
struct Ln;

impl<S: Simd> LaneMap<S> for Ln {
    #[inline(always)]
    fn apply(self, simd: S, n: S::f32s, _: S::f32s) -> S::f32s {
        lanes::ln(simd, n)
    }
}

/// The log-count table: `out_j = ln(counts_j)` for counts already at least 1.
#[inline(always)]
pub(crate) fn log_counts<S: Simd>(simd: S, counts: &[f32], out: &mut [f32]) {
    lanes::store(simd, Ln, counts, counts, out, Ahead::NONE);
}

impl PoweredCounts {
    /// The largest exponent either factor may reach (module documentation).
    const LIMIT: f32 = 60.0;

    /// `None` when the call's exponents leave the safe range (module
    /// documentation); the caller then uses [`class_forward`].
    #[inline(always)]
    pub(crate) fn new<S: Simd>(simd: S, params: &SeesawParams, log_counts: &[f32]) -> Option<PoweredCounts> {
        let q = match params.q {
            0.0 => SmallQ::Zero,
            1.0 => SmallQ::One,
            2.0 => SmallQ::Two,
            _ => return None,
        };
        // No compensation when `eps >= 1` (module documentation), which
        // also keeps the floor `c` of the terms below `e^20`.
        let q = if params.log_eps >= 0.0 { SmallQ::Zero } else { q };
        let log_n_max = lanes::max(simd, log_counts).max(0.0);
        let compensation = params.q * -params.log_eps;
        let mitigation = params.p * log_n_max;
        if !(compensation <= Self::LIMIT && mitigation <= Self::LIMIT && params.p >= 0.0) {
            return None;
        }
        let mut powered = LineAligned::zeros(log_counts.len());
        let power = Power { p: params.p, log_n_max };
        lanes::store(simd, power, log_counts, log_counts, powered.as_mut_slice(), Ahead::NONE);
        Some(PoweredCounts {
            powered,
            q,
            eps: params.log_eps.exp(),
        })
    }
}

/// `e_j * min(P_j, P_y) * max(c, e_j)^q` per lane, from `e_j = exp(z_j -
/// shift)` (kept by the first pass) and the row's floor `c = 1 / k =
/// max(e_y, eps sum_j e_j)`, for `q` in {0, 1, 2}: `c^q P_y M_j C_j e_j`
/// with no exponential, no division and no branch (the row's sum is divided
/// by `c^q P_y` once). Taking the terms `c^q` times their size spares a
/// multiplication per term and power: `max(1, (e_j k)^q)` would need `e_j k`
/// first.
#[derive(Clone, Copy)]
struct PoweredTerm {
    p_y: f32,
    floor: f32,
    q: SmallQ,
}

impl PoweredTerm {
    /// The term as two factors whose product it is: `e_j min(P_j, P_y)
    /// max(c, e_j)^(q - 1)` and `max(c, e_j)` (none for `q = 0`).
    #[inline(always)]
    fn factors<S: Simd>(self, simd: S, e: S::f32s, powered: S::f32s) -> (S::f32s, Option<S::f32s>) {
        let mitigated = simd.mul_f32s(e, simd.min_f32s(powered, simd.splat_f32s(self.p_y)));
        let compensated = simd.max_f32s(e, simd.splat_f32s(self.floor));
        match self.q {
            SmallQ::Zero => (mitigated, None),
            SmallQ::One => (mitigated, Some(compensated)),
            SmallQ::Two => (simd.mul_f32s(mitigated, compensated), Some(compensated)),
        }
    }
}

impl<S: Simd> LaneMap<S> for PoweredTerm {
    #[inline(always)]
    fn apply(self, simd: S, e: S::f32s, powered: S::f32s) -> S::f32s {
        match self.factors(simd, e, powered) {
            (mitigated, None) => mitigated,
            (mitigated, Some(compensation)) => simd.mul_f32s(mitigated, compensation),
        }
    }

    #[inline(always)]
    fn add_to(self, simd: S, acc: S::f32s, e: S::f32s, powered: S::f32s) -> S::f32s {
        match self.factors(simd, e, powered) {
            (mitigated, None) => simd.add_f32s(acc, mitigated),
            (mitigated, Some(compensation)) => simd.mul_add_f32s(mitigated, compensation, acc),
        }
    }

    #[inline(always)]
    fn apply_and_add(self, simd: S, acc: S::f32s, e: S::f32s, powered: S::f32s) -> (S::f32s, S::f32s) {
        match self.factors(simd, e, powered) {
            (mitigated, None) => (mitigated, simd.add_f32s(acc, mitigated)),
            (mitigated, Some(compensation)) => (
                simd.mul_f32s(mitigated, compensation),
                simd.mul_add_f32s(mitigated, compensation, acc),
            ),
        }
    }
}

/// The largest `sum_j exp(z_j - z_y)` for which [`class_forward_powered`]
/// keeps the label's logit as its shift: `e^20`, so that every term is at
/// most `e^60` (module documentation).
const LABEL_SHIFT_LIMIT: f32 = 4.851_652e8;

/// What [`class_forward_powered`] leaves of a row: its shift and its sums,
/// whose logarithms the row's end takes ([`Ends`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoweredRow {
    shift: f32,
    /// The row's end: `total` is `sum_j e_j`, `ratio` the adjusted sum's
    /// `x` in `ln_1p(x)`, `before` is `shift - z_y` (no margin: the caller
    /// adds its objectness pair's).
    pub(crate) end: RowEnd,
}

impl PoweredRow {
    /// The unweighted loss (clamped at 0) and the row's stats, from its end.
    pub(crate) fn finish(&self, ended: &Ended) -> (f32, RowStats) {
        let stats = RowStats {
            max: self.shift,
            lse: ended.lse,
            adjusted: ended.adjusted,
        };
        (non_negative(ended.loss), stats)
    }
}

/// [`class_forward`] with one exponential per logit (module documentation,
/// "The CPU mirror"), up to the row's end: [`PoweredRow::finish`] gives the
/// loss and stats once the end is taken. `scratch` is at least as long as
/// `z`; it receives `exp(z_j - shift)`, read back beside the per-class
/// table, so it is fastest on a cache line as that table is
/// ([`LineAligned`]). With `grad = Some((row, scale))` it also writes what
/// [`class_grad`] would, `scale * softmax(z')`, from the same products: the
/// row's only exponentials are the loss pass's (the label's entry is the
/// end's, as there). `ahead` as for [`class_forward`].
#[inline(always)]
pub(crate) fn class_forward_powered<S: Simd>(
    simd: S,
    powered: &PoweredCounts,
    z: &[f32],
    label: usize,
    scratch: &mut [f32],
    grad: Option<(&mut [f32], f32)>,
    ahead: Ahead,
) -> PoweredRow {
    // Keeps `e_j` for the second pass, which needs no exponential.
    let e = &mut scratch[..z.len()];
    let mut shift = z[label];
    let mut total = lanes::sum_keeping(simd, CappedExp { shift }, z, z, e, ahead);
    // False for NaN too.
    let label_shift_holds = total <= LABEL_SHIFT_LIMIT;
    if !label_shift_holds {
        // A label far below the row's maximum, or NaN: the maximum instead.
        shift = row_max(simd, z);
        total = lanes::sum_keeping(simd, ShiftedExp { shift }, z, z, e, Ahead::NONE);
    }
    // `c = 1 / k = exp(threshold - shift) = max(e_y, total * eps)` (module
    // documentation); the stats' `lse` is `ln(total)`, taken at the row's
    // end. The terms come `c^q` times their size.
    let floor = e[label].max(total * powered.eps);
    let unscale = powered.q.power(1.0 / floor);
    let p_y = powered.powered.as_slice()[label];
    let term = PoweredTerm {
        p_y,
        floor,
        q: powered.q,
    };
    // The label's term, `e_y P_y` (`M_y = C_y = 1`), stays out of the vector
    // sum: next to it the others would each be rounded to its precision, a
    // confident row's small loss with them. `others` is at most `C e^60`.
    let e_y = std::mem::take(&mut e[label]);
    let others = match grad {
        None => lanes::sum(simd, term, e, powered.powered.as_slice(), Ahead::NONE) * unscale,
        Some((grad, scale)) => {
            // `softmax(z')_j = term_j / sum`: the terms are kept in the
            // gradient's row (in L1 until the row is done) and scaled there.
            let grad = &mut grad[..z.len()];
            let others = lanes::sum_keeping(simd, term, e, powered.powered.as_slice(), grad, Ahead::NONE) * unscale;
            lanes::scale(simd, scale * unscale / (e_y * p_y + others), grad);
            others
        }
    };
    PoweredRow {
        shift,
        end: RowEnd {
            total,
            // `ln(sum_j e_j M_j C_j)` is `ln_1p` of this: `ln_1p(others /
            // P_y)` when the shift is the label's logit (`e_y = 1`).
            ratio: (e_y - 1.0) + others * (1.0 / p_y),
            before: shift - z[label],
            margin: 0.0,
        },
    }
}

/// Asks for every cache line of `ahead`'s rows at once (hints; nothing off
/// x86-64): for a row whose turn runs no pass over the logits to spread the
/// requests over (a bad label, a background row), so that the rows ahead
/// still arrive in time.
#[inline(always)]
pub(crate) fn prefetch_row(ahead: Ahead) {
    lanes::prefetch_from(ahead, 0);
}

/// The objectness pair of a detection row: a 2-way cross-entropy of
/// `(fg, bg)` with target `bg` for a background row, else `fg`. With `d` the
/// other logit minus the target's (the row end's `margin`), its loss is
/// `softplus(d) = max(d, 0) + ln(1 + e^-|d|)` and its gradient `sigmoid(d)`
/// for the other logit, minus that for the target: one exponential for both
/// (the end's `pair_exp`), and a confident pair's small loss keeps its
/// precision (`ln_1p`, the end's `pair_ln_1p`). NaN in either logit gives
/// NaN.
#[derive(Clone, Copy)]
pub(crate) struct Objectness {
    background: bool,
    /// The other logit minus the target's.
    d: f32,
}

impl Objectness {
    #[inline(always)]
    pub(crate) fn new(fg: f32, bg: f32, background: bool) -> Self {
        let d = if background { fg - bg } else { bg - fg };
        Objectness { background, d }
    }

    /// What the row's end takes the pair's exponential and logarithm of.
    pub(crate) fn margin(self) -> f32 {
        self.d
    }

    /// The pair's unweighted loss.
    #[inline(always)]
    pub(crate) fn loss(self, ended: &Ended) -> f32 {
        max0(self.d) + ended.pair_ln_1p
    }

    /// Writes `scale * d loss / d (fg, bg)` into `grad[..2]`.
    #[inline(always)]
    pub(crate) fn write_grad(self, ended: &Ended, grad: &mut [f32], scale: f32) {
        let e = ended.pair_exp;
        let other = if self.d >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
        let (fg, bg) = if self.background {
            (other, -other)
        } else {
            (-other, other)
        };
        grad[0] = scale * fg;
        grad[1] = scale * bg;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ends::end_one;
    use lanes::tests::for_each_arch;
    use pulp::WithSimd;

    /// The row's loss and gradient in float64, straight from the Python
    /// references' formulation (softmax ratios, powers, cross-entropy of the
    /// adjusted logits), for `scale = 1`.
    fn reference_row(p: f64, q: f64, eps: f64, z: &[f32], label: usize, log_counts: &[f32]) -> (f64, Vec<f64>) {
        let z: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let n: Vec<f64> = log_counts.iter().map(|&l| (l as f64).exp()).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = z.iter().map(|&v| (v - m).exp()).sum();
        let s: Vec<f64> = z.iter().map(|&v| (v - m).exp() / total).collect();
        let adjusted: Vec<f64> = (0..z.len())
            .map(|j| {
                if j == label {
                    return z[j];
                }
                let mitigation = if n[j] < n[label] {
                    (n[j] / n[label]).powf(p)
                } else {
                    1.0
                };
                let ratio = s[j] / s[label].max(eps);
                let compensation = if ratio > 1.0 { ratio.powf(q) } else { 1.0 };
                z[j] + (mitigation * compensation).ln()
            })
            .collect();
        let ma = adjusted.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = ma + adjusted.iter().map(|&v| (v - ma).exp()).sum::<f64>().ln();
        let grad = (0..z.len())
            .map(|j| (adjusted[j] - lse).exp() - if j == label { 1.0 } else { 0.0 })
            .collect();
        (lse - z[label], grad)
    }

    /// Rows with confident wrong classes (compensated), a confident right
    /// one, flat ones, and rare and frequent labels; C odd so that every
    /// vector width leaves a tail.
    fn rows(c: usize) -> Vec<(Vec<f32>, usize)> {
        (0..40)
            .map(|row| {
                let mut z: Vec<f32> = (0..c).map(|j| ((j * 31 + row * 17) % 97) as f32 * 0.05 - 2.0).collect();
                let label = (row * 131) % c;
                match row % 5 {
                    0 => {
                        for k in 0..3 {
                            z[(label + 1 + k * 7) % c] += 6.0 + k as f32;
                        }
                    }
                    1 => z[label] += 8.0,
                    2 => z.iter_mut().for_each(|v| *v *= 0.01),
                    // A label far below the row's top: the powered pass
                    // shifts by the maximum, not by the label's logit.
                    3 => z[label] -= 30.0,
                    _ => {}
                }
                (z, label)
            })
            .collect()
    }

    struct AgainstFloat64 {
        p: f32,
        q: f32,
        eps: f32,
    }

    impl WithSimd for AgainstFloat64 {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let (p, q, eps) = (self.p, self.q, self.eps);
            let c = 1203;
            let log_counts: Vec<f32> = (0..c).map(|j| ((j * 7919) % 5000) as f32 * 0.003).collect();
            let params = SeesawParams::constants(p, q, eps.ln());
            // q = 1.5 has no powered pass: the general one is checked alone.
            let powered = PoweredCounts::new(simd, &params, &log_counts);
            assert_eq!(powered.is_some(), q != 1.5, "the powered pass for q in {{0, 1, 2}}");
            let mut grad = vec![0.0f32; c];
            let mut fused_grad = vec![0.0f32; c];
            for (r, (z, label)) in rows(c).into_iter().enumerate() {
                let (want, want_grad) = reference_row(p as f64, q as f64, eps as f64, &z, label, &log_counts);
                let (general, general_stats) = class_forward(simd, &params, &z, label, &log_counts, Ahead::NONE);
                let mut scratch = vec![0.0; c];
                let (fast, fast_stats) = match &powered {
                    Some(powered) => {
                        let with_grad = Some((&mut fused_grad[..], 1.0));
                        let fused =
                            class_forward_powered(simd, powered, &z, label, &mut scratch, with_grad, Ahead::NONE);
                        let alone = class_forward_powered(simd, powered, &z, label, &mut scratch, None, Ahead::NONE);
                        let (fused_end, alone_end) = (end_one(fused.end), end_one(alone.end));
                        assert_eq!(
                            fused_end, alone_end,
                            "row {r}: the loss pass with and without the gradient"
                        );
                        fused_grad[label] = fused_end.label_grad;
                        fused.finish(&fused_end)
                    }
                    None => (general, general_stats),
                };
                // The loss is `lse' - z_y`: f32 rounds `lse'` to its own
                // magnitude, so the bound is a few roundings of that.
                let z_y = z[label] as f64;
                let bound = 4.0 * f32::EPSILON as f64 * (want + z_y).abs().max(1.0);
                for (name, got) in [("general", general), ("powered", fast)] {
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "p {p} q {q} eps {eps} row {r} {name}: loss {got}, float64 {want}"
                    );
                }
                let mut grads = Vec::new();
                for (name, stats) in [("general", general_stats), ("powered", fast_stats)] {
                    class_grad(
                        simd,
                        &params,
                        &z,
                        label,
                        &log_counts,
                        stats,
                        1.0,
                        &mut grad,
                        Ahead::NONE,
                    );
                    grad[label] = end_one(RowEnd::of_loss(stats.loss(z[label]))).label_grad;
                    grads.push((name, grad.clone()));
                }
                if powered.is_some() {
                    grads.push(("powered pass's own", fused_grad.clone()));
                }
                for (name, grad) in grads {
                    for (j, (&got, &want)) in grad.iter().zip(&want_grad).enumerate() {
                        assert!(
                            (got as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(),
                            "p {p} q {q} eps {eps} row {r} {name} gradient [{j}]: {got}, float64 {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn row_passes_match_float64_on_every_arch() {
        for (p, q) in [(0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (1.3, 1.0), (0.8, 1.5)] {
            for_each_arch(|| AgainstFloat64 { p, q, eps: 1e-2 });
        }
        // The powered pass's floor `c = max(e_y, eps sum_j e_j)` at its
        // ends: an `eps` near the bound `q * -log(eps) <= 60` (the rows
        // whose label lies far below their top then have `c` far below 1),
        // and an `eps` of 1 or more, where no logit is compensated (at
        // 1e30, `c^q` would overflow).
        let ends = [
            (0.8, 2.0, 1e-12),
            (1.3, 1.0, 1e-20),
            (0.8, 2.0, 1.0),
            (0.8, 2.0, 1e30),
            (0.8, 1.0, 1e30),
        ];
        for (p, q, eps) in ends {
            for_each_arch(|| AgainstFloat64 { p, q, eps });
        }
    }

    struct SafeRange;

    impl WithSimd for SafeRange {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let log_counts: Vec<f32> = (0..1203).map(|j| ((j * 7919) % 5000) as f32 * 0.003).collect();
            let eps = (1e-2f32).ln();
            assert!(PoweredCounts::new(simd, &SeesawParams::constants(0.8, 1.5, eps), &log_counts).is_none());
            for q in [0.0, 1.0, 2.0] {
                assert!(PoweredCounts::new(simd, &SeesawParams::constants(0.8, q, eps), &log_counts).is_some());
            }
            let steep = SeesawParams::constants(9.0, 2.0, eps);
            assert!(PoweredCounts::new(simd, &steep, &log_counts).is_none());
            let sharp = SeesawParams::constants(0.8, 20.0, eps);
            assert!(PoweredCounts::new(simd, &sharp, &log_counts).is_none());
            // int64 counts: the defaults stay on the fast path whatever they are.
            let huge = vec![(i64::MAX as f32).ln(); 5];
            assert!(PoweredCounts::new(simd, &SeesawParams::constants(0.8, 2.0, eps), &huge).is_some());
        }
    }

    #[test]
    fn powered_path_only_in_its_safe_range() {
        for_each_arch(|| SafeRange);
    }

    struct MaxCheck;

    impl WithSimd for MaxCheck {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            assert_eq!(lanes::max(simd, &[]), f32::NEG_INFINITY);
            assert_eq!(lanes::max(simd, &[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
            for len in [1, 7, 16, 17, 37, 64, 65, 1205] {
                let long: Vec<f32> = (0..len).map(|i| (i as f32 * 0.7).sin() - 2.0).collect();
                assert_eq!(
                    lanes::max(simd, &long),
                    long.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                );
                let mut nan = long.clone();
                nan[len / 2] = f32::NAN;
                let (_, lse) = max_and_lse(simd, &nan, Ahead::NONE);
                assert!(lse.is_nan(), "a NaN logit reaches the sums");
            }
        }
    }

    #[test]
    fn max_handles_every_tail_and_nan_reaches_the_sums() {
        for_each_arch(|| MaxCheck);
    }
}
