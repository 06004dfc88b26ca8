//! The ends of rows: the logarithms and exponentials a row needs once its
//! passes are done (its two log-sum-exps, the label's gradient, the
//! objectness pair), taken for [`GROUP`] rows at once in vector code.
//!
//! One row at a time they were four library calls (`logf` three times,
//! `expf`, and `expm1f` where a gradient is written): work no vector
//! shared, and calls whose convention made the row loops around them save
//! and reload their vector registers. They cost 11% of `forward_backward`
//! and 5% of the loss pass (benches/RESULTS.md). Here they are a few dozen
//! vector operations per group, and the row loops make no call.
//!
//! Each lane's value depends on that lane's inputs alone, and the scalar
//! fallback computes every lane as the vector code does (fused
//! multiply-adds included), so a row's results do not depend on the group
//! it lands in, nor on the rows beside it.

use super::lanes::{exp, exp_m1, ln, ln_1p};
use pulp::Simd;

/// Rows per group: a multiple of every vector width.
pub(crate) const GROUP: usize = 16;

/// What a row's passes leave for its end. A part the row does not have is
/// left at [`RowEnd::NONE`]'s value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowEnd {
    /// `sum_j exp(z_j - shift)`: its logarithm is the stats' `lse`.
    pub(crate) total: f32,
    /// `x` of the adjusted sum's `ln_1p(x)`, the stats' `adjusted`.
    pub(crate) ratio: f32,
    /// The class loss before its clamp is `before + ln_1p(ratio)`: `shift -
    /// z_y` for a loss pass, the whole loss for a row whose stats are known.
    pub(crate) before: f32,
    /// The objectness pair's margin, the other logit minus the target's.
    pub(crate) margin: f32,
}

impl RowEnd {
    /// A row with nothing to end: every value finite, none used.
    pub(crate) const NONE: RowEnd = RowEnd {
        total: 1.0,
        ratio: 0.0,
        before: 0.0,
        margin: 0.0,
    };

    /// A row whose loss before its clamp is known (from its stats): only
    /// the label's gradient (and the objectness pair, whose margin the
    /// caller sets) are left.
    pub(crate) fn of_loss(loss: f32) -> RowEnd {
        RowEnd {
            before: loss,
            ..RowEnd::NONE
        }
    }
}

/// A row's end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ended {
    /// `ln(total)`.
    pub(crate) lse: f32,
    /// `ln_1p(ratio)`.
    pub(crate) adjusted: f32,
    /// The class loss before its clamp, `before + adjusted`.
    pub(crate) loss: f32,
    /// `exp(-loss) - 1`: the label's gradient, `softmax(z')_y - 1`.
    pub(crate) label_grad: f32,
    /// The objectness pair's `e^-|margin|`.
    pub(crate) pair_exp: f32,
    /// Its `ln_1p(e^-|margin|)`.
    pub(crate) pair_ln_1p: f32,
}

/// Up to [`GROUP`] rows' ends, gathered by [`Ends::push`], computed by
/// [`Ends::run`], read by [`Ends::ended`].
pub(crate) struct Ends {
    len: usize,
    total: [f32; GROUP],
    ratio: [f32; GROUP],
    before: [f32; GROUP],
    margin: [f32; GROUP],
    lse: [f32; GROUP],
    adjusted: [f32; GROUP],
    loss: [f32; GROUP],
    label_grad: [f32; GROUP],
    pair_exp: [f32; GROUP],
    pair_ln_1p: [f32; GROUP],
}

impl Ends {
    pub(crate) fn new() -> Ends {
        let zero = [0.0; GROUP];
        Ends {
            len: 0,
            total: [RowEnd::NONE.total; GROUP],
            ratio: zero,
            before: zero,
            margin: zero,
            lse: zero,
            adjusted: zero,
            loss: zero,
            label_grad: zero,
            pair_exp: zero,
            pair_ln_1p: zero,
        }
    }

    /// Rows gathered since the last [`Ends::clear`].
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == GROUP
    }

    /// Adds a row; its index is the `len()` before.
    pub(crate) fn push(&mut self, end: RowEnd) {
        let i = self.len;
        self.total[i] = end.total;
        self.ratio[i] = end.ratio;
        self.before[i] = end.before;
        self.margin[i] = end.margin;
        self.len += 1;
    }

    /// Empties the group; the slots keep the last rows' values.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Computes every gathered row's end (the slots past `len()` hold an
    /// earlier group's rows, or [`RowEnd::NONE`]'s values: computed lane by
    /// lane and never read).
    #[inline(always)]
    pub(crate) fn run<S: Simd>(&mut self, simd: S) {
        fn lanes<S: Simd>(a: &[f32; GROUP]) -> &[S::f32s] {
            S::as_simd_f32s(a).0
        }
        let (total, ratio, before, margin) = (
            lanes::<S>(&self.total),
            lanes::<S>(&self.ratio),
            lanes::<S>(&self.before),
            lanes::<S>(&self.margin),
        );
        let mut out = [
            &mut self.lse,
            &mut self.adjusted,
            &mut self.loss,
            &mut self.label_grad,
            &mut self.pair_exp,
            &mut self.pair_ln_1p,
        ]
        .map(|a| S::as_mut_simd_f32s(a).0);
        for i in 0..total.len() {
            let adjusted = ln_1p(simd, ratio[i]);
            let loss = simd.add_f32s(before[i], adjusted);
            let pair_exp = exp(simd, simd.neg_f32s(simd.abs_f32s(margin[i])));
            let values = [
                ln(simd, total[i]),
                adjusted,
                loss,
                exp_m1(simd, simd.neg_f32s(loss)),
                pair_exp,
                ln_1p(simd, pair_exp),
            ];
            for (o, v) in out.iter_mut().zip(values) {
                o[i] = v;
            }
        }
    }

    /// Row `i`'s end, after [`Ends::run`].
    pub(crate) fn ended(&self, i: usize) -> Ended {
        Ended {
            lse: self.lse[i],
            adjusted: self.adjusted[i],
            loss: self.loss[i],
            label_grad: self.label_grad[i],
            pair_exp: self.pair_exp[i],
            pair_ln_1p: self.pair_ln_1p[i],
        }
    }
}

/// One row's end, in the scalar fallback: the same values as a group's.
#[cfg(test)]
pub(crate) fn end_one(end: RowEnd) -> Ended {
    use pulp::WithSimd;
    struct One(RowEnd);
    impl WithSimd for One {
        type Output = Ended;
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) -> Ended {
            let mut ends = Ends::new();
            ends.push(self.0);
            ends.run(simd);
            ends.ended(0)
        }
    }
    One(end).with_simd(pulp::Scalar::new())
}
