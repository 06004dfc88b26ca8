//! The CPU mirror's vector loops, written once over `pulp`'s [`Simd`]: the
//! same code is compiled for AVX-512, AVX2 with FMA, SSE, NEON and plain
//! scalar, and [`pulp::Arch`] picks the widest the processor has at run
//! time. Every loop walks a row in whole vectors, then its tail in one
//! masked vector, and reduces its lanes in a fixed order, so a row's results
//! depend on the row and the instruction set alone.

use pulp::{Simd, WithSimd};

/// Runs `op` compiled for the widest instruction set this processor has
/// (detected once).
pub(crate) fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    static ARCH: once_cell::sync::Lazy<pulp::Arch> = once_cell::sync::Lazy::new(pulp::Arch::new);
    ARCH.dispatch(op)
}

/// Lane indices 0, 1, 2, ...: compared with a tail's length to mask it.
const IOTA: [f32; 64] = {
    let mut iota = [0.0; 64];
    let mut i = 0;
    while i < 64 {
        iota[i] = i as f32;
        i += 1;
    }
    iota
};

/// `e^x` per lane, for `x <= 88` (and on AVX-512 for every `x`, below),
/// within about one f32 rounding of `e^x` (relative 1.2e-7) plus `|x| *
/// 1.4e-8`, the rounding of `log2 e` to f32, wherever `e^x` is normal: at
/// most 1.4e-7 at the `x >= -1` where a row's largest terms are. No libm
/// call. `e^x` is 0 below a bound, as low as [`ExpScale`] allows; `e^-inf`
/// is exactly 0.
///
/// Both ways write `e^x = 2^(x log2 e)` as `2^n 2^f`, `n` the nearest
/// multiple of a step and `f` the rest, and scale `2^f` by `2^n` as
/// [`ExpScale`] says for the instruction set:
///
/// - `t = x log2(e) + R` (one multiply-add), `R` chosen so that the sum's
///   last bit is the step, rounds `x log2(e)` to `n` and leaves it in the
///   low bits of `t`; `n = t - R` exactly, and `f = x log2(e) - n` comes
///   from a second multiply-add, so the product is not rounded before `n`
///   is taken off: `f` has one rounding.
/// - AVX-512 ([`ExpScale::Scalef`], `exp_avx512`): a step of 1/16, so that
///   `f` is in `[-1/32, 1/32]`; `2^(n mod 1)` comes from a 16-entry table
///   by `t`'s low four bits (one `vpermps`), `2^f - 1` from a degree-3
///   polynomial (within 1.7e-9), and their product is rounded once: the
///   table's rounding and the result's, each at most half an f32 rounding,
///   stay below 1.2e-7 together.
/// - Elsewhere ([`ExpScale::Bits`]): a step of 1, `f` in `[-1/2, 1/2]`, and
///   a minimax fit of `2^f` (constant term fixed at 1, within 3e-9) of
///   degree 6.
///
/// Callers pass `x = z - shift` rather than prescaling `z` and the shift by
/// `log2 e` separately: the rounding of a prescaled shift would move every
/// term of a row by the same factor, about `|shift| * 4e-8`.
///
/// NaN stays NaN: the clamp, or the mask, replaces only lanes that compare
/// below the bound, which NaN never does, and every later step propagates
/// it.
#[inline(always)]
pub(crate) fn exp<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = as_v4(simd) {
        // Always taken: `S` is `V4` here, so `S::f32s` is `f32x16`.
        if let Some(e) = same_lanes(x).map(|x| exp_avx512(v4, x)).and_then(same_lanes) {
            return e;
        }
    }
    exp_bits(simd, x)
}

/// `2^(i / 16)` to f32, for [`exp`] on AVX-512.
#[cfg(target_arch = "x86_64")]
const EXP_TABLE: [f32; 16] = [
    1.0,
    1.044_273_7,
    1.090_507_7,
    1.138_788_6,
    1.189_207_1,
    1.241_857_8,
    1.296_839_6,
    1.354_255_6,
    std::f32::consts::SQRT_2,
    1.476_826_2,
    1.542_210_8,
    1.610_490_3,
    1.681_792_9,
    1.756_252_2,
    1.834_008_1,
    1.915_206_6,
];

/// [`exp`] on AVX-512 (its documentation): a step of 1/16, a table and a
/// degree-3 polynomial, 6 multiply-class instructions against the degree-6
/// polynomial's 8 (benches/RESULTS.md).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn exp_avx512(v4: pulp::x86::V4, x: pulp::f32x16) -> pulp::f32x16 {
    use std::arch::x86_64::{__m512, _CMP_NLT_UQ};
    // `1.5 * 2^19`: sums in `[2^19, 2^20)` have a last bit of 1/16.
    const ROUND: f32 = 786_432.0;
    /// `2^f - 1 = f (c1 + c2 f + c3 f^2)` on `[-1/32, 1/32]`, minimax.
    const POLY: [f32; 3] = [std::f32::consts::LN_2, 0.240_234_29, 0.055_505_95];
    let (t, n, f) = split_log2(v4, x, ROUND);
    // Past `x = 2^19 ln 2` the sum's last bit is more than 1/16 and `f` is
    // the product's rounding, far outside `[-1/32, 1/32]`: a large negative
    // one would make the polynomial's `2^f` negative and the result `-inf`
    // for a large `x`. The floor keeps it positive (so inf there), changes
    // no `f` in range, and keeps NaN (x86's `max` returns its second
    // operand then).
    let f = v4.max_f32s(v4.splat_f32s(-1.0 / 16.0), f);
    let q = v4.mul_add_f32s(v4.splat_f32s(POLY[2]), f, v4.splat_f32s(POLY[1]));
    let q = v4.mul_add_f32s(q, f, v4.splat_f32s(POLY[0]));
    let below_one = v4.mul_f32s(q, f);
    // `vpermps` reads the low four bits of each lane's index: `16 n mod 16`.
    let table: __m512 = pulp::cast(EXP_TABLE);
    let step: pulp::f32x16 = pulp::cast(v4.avx512f._mm512_permutexvar_ps(pulp::cast(t), table));
    let fraction = v4.mul_add_f32s(step, below_one, step);
    // `vscalefps` scales by `2^floor(n)`, which with the table's `2^(n mod
    // 1)` is `2^n`; the lanes below the bound (and `-inf`, whose `f` is
    // NaN) are zeroed by the mask, NaN kept.
    let lowest: __m512 = pulp::cast(v4.splat_f32s(ExpScale::Scalef.lowest()));
    let keep = v4.avx512f._mm512_cmp_ps_mask::<_CMP_NLT_UQ>(pulp::cast(x), lowest);
    pulp::cast(
        v4.avx512f
            ._mm512_maskz_scalef_ps(keep, pulp::cast(fraction), pulp::cast(n)),
    )
}

/// [`exp`] where `2^n` goes into the exponent field ([`ExpScale::Bits`]):
/// a step of 1 and a degree-6 polynomial.
#[inline(always)]
fn exp_bits<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    // `1.5 * 2^23 + 127`: the sum's last bit is 1, and its low bits hold
    // `n + 127`.
    const ROUND: f32 = 12_582_912.0 + 127.0;
    const POLY: [f32; 6] = [
        std::f32::consts::LN_2, // what the fit gives, to f32
        0.240_226_46,
        0.055_503_286,
        0.009_618_489,
        0.001_339_993,
        0.000_153_457_92,
    ];
    let (t, _, f) = split_log2(simd, clamp_below(simd, x, ExpScale::Bits.lowest()), ROUND);
    let mut p = simd.splat_f32s(POLY[5]);
    for &c in POLY[..5].iter().rev() {
        p = simd.mul_add_f32s(p, f, simd.splat_f32s(c));
    }
    p = simd.mul_add_f32s(p, f, simd.splat_f32s(1.0));
    // `n + 127` moved into the exponent field by an integer multiply by
    // `2^23` (wrapping; the rest of `t`'s bits fall off the top).
    let exponent = simd.mul_u32s(simd.transmute_u32s_f32s(t), simd.splat_u32s(1 << 23));
    simd.mul_f32s(p, simd.transmute_f32s_u32s(exponent))
}

/// `x log2 e` as `n + f` ([`exp`]'s documentation): the rounding sum `t =
/// x log2(e) + round`, whose last bit is the step and whose low bits hold
/// `n`; `n = t - round`, exact; and `f = x log2(e) - n`, one rounding.
#[inline(always)]
fn split_log2<S: Simd>(simd: S, x: S::f32s, round: f32) -> (S::f32s, S::f32s, S::f32s) {
    let log2_e = simd.splat_f32s(std::f32::consts::LOG2_E);
    let t = simd.mul_add_f32s(x, log2_e, simd.splat_f32s(round));
    let n = simd.sub_f32s(t, simd.splat_f32s(round));
    let f = simd.mul_add_f32s(x, log2_e, simd.neg_f32s(n));
    (t, n, f)
}

/// How [`exp`] multiplies `2^f` by `2^n` on an instruction set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ExpScale {
    /// AVX-512's `vscalefps`: `p * 2^floor(n)` rounded once, for any `n`. A
    /// result past the f32 range is inf and one below the normal range its
    /// subnormal or 0, so [`exp`] needs no bound above; and AVX-512's
    /// `vpermps` looks up a 16-entry table, so that `n` can step by 1/16.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Scalef,
    /// Everywhere else: `n + 127` moved into the exponent field, and the
    /// product with `2^f`. Right for `n` in `[-126, 128)`: [`exp`]'s `x`
    /// must be at most 88, and `e^x` is 0 at or below `-126.5 ln 2` (about
    /// -87.7), which no sum or gradient here can tell from the subnormal it
    /// replaces.
    Bits,
}

impl ExpScale {
    /// The one for `simd`'s instruction set (a constant once `S` is known).
    #[inline(always)]
    pub(crate) fn of<S: Simd>(simd: S) -> ExpScale {
        #[cfg(target_arch = "x86_64")]
        if as_v4(simd).is_some() {
            return ExpScale::Scalef;
        }
        let _ = simd;
        ExpScale::Bits
    }

    /// The `x` below which [`exp`] gives 0 (exactly 0 for `-inf`): as low as
    /// the scale keeps `2^n` right, so that every larger `x` is as exact as
    /// the scale allows. [`ExpScale::Bits`] clamps `x` there before it
    /// starts; [`ExpScale::Scalef`] leaves `x` as it is, garbage in the lanes
    /// below (`-inf` makes `f` NaN, a huge `-x` an `f` far outside its
    /// range), and zeroes those lanes with a mask on its last instruction,
    /// so that nothing waits on a clamp. Its bound is where `e^x` rounds to
    /// 0 anyway: `2^f * 2^-151` is below half the least subnormal.
    #[inline(always)]
    fn lowest(self) -> f32 {
        match self {
            ExpScale::Scalef => -151.0 * std::f32::consts::LN_2,
            ExpScale::Bits => -127.0 * std::f32::consts::LN_2,
        }
    }
}

/// `e^x` per lane for `x` up to `cap`, and for a larger `x` or NaN either
/// NaN or a value at least `e^cap` to a rounding: [`exp`] of `min(x, cap)`
/// where [`exp`] needs `x <= 88` (x86's `min` gives `cap` for NaN), of `x`
/// itself (inf past the f32 range) where it does not, which saves the
/// `min`. `cap` is at most 88.
#[inline(always)]
pub(crate) fn exp_capped<S: Simd>(simd: S, x: S::f32s, cap: f32) -> S::f32s {
    match ExpScale::of(simd) {
        ExpScale::Scalef => exp(simd, x),
        ExpScale::Bits => exp(simd, simd.min_f32s(x, simd.splat_f32s(cap))),
    }
}

/// `simd` as AVX-512's instruction set, where it is that one; after
/// monomorphisation a constant.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_v4<S: Simd>(simd: S) -> Option<pulp::x86::V4> {
    same_lanes(simd)
}

/// `v` as type `B`, where `A` is `B` (a generic instruction set's vector
/// as the concrete one); after monomorphisation a constant.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn same_lanes<A: std::any::Any + Copy, B: std::any::Any + Copy>(v: A) -> Option<B> {
    (&v as &dyn std::any::Any).downcast_ref::<B>().copied()
}

/// `ln x` per lane, within one f32 rounding of the exact value for every
/// positive `x`, subnormals included; `ln 0 = -inf`, `ln inf = inf`, and a
/// negative `x` or NaN gives NaN.
///
/// `x = 2^e m` with `m` in `[sqrt(1/2), sqrt(2))`, and with `f = m - 1`
/// (exact) and `s = f / (2 + f)` (`|s| <= 0.1716`), `ln m = 2 atanh(s) =
/// 2s + s R` with `R = 2s^2/3 + 2s^4/5 + 2s^6/7 + 2s^8/9` (the series' next
/// term is below 2e-9 of the first). As `2s = f - s f`, that is `f - s (f -
/// R)`: the exact `f` plus a correction at most half its size, so the
/// roundings fall on the correction. `e ln 2` is added in two parts, the
/// first exact for every `e` an f32 has.
#[inline(always)]
pub(crate) fn ln<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    /// `ln 2` to 9 bits (355/512): `e * LN2_HI` is exact for `|e| < 2^15`.
    const LN2_HI: f32 = 0.693_359_4;
    /// `ln 2 - LN2_HI`, to f32.
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// Subnormals are scaled by `2^25` first, so that they too have a full
    /// mantissa.
    const SUBNORMAL_SCALE: f32 = 33_554_432.0;
    /// The mantissa bits of `sqrt(2)`: a larger mantissa is halved.
    const SQRT_2_MANTISSA: u32 = 0x0035_04f3;
    const MANTISSA: u32 = 0x007f_ffff;
    /// `bits(2^23) | n` is `2^23 + n` for an integer `n < 2^23`: subtracting
    /// `2^23` converts `n` to f32 exactly.
    const TWO_23_BITS: u32 = 0x4b00_0000;
    const TWO_23: f32 = 8_388_608.0;
    let f32s = |v: f32| simd.splat_f32s(v);
    let u32s = |v: u32| simd.splat_u32s(v);
    let subnormal = simd.less_than_f32s(x, f32s(f32::MIN_POSITIVE));
    let scaled = simd.select_f32s(subnormal, simd.mul_f32s(x, f32s(SUBNORMAL_SCALE)), x);
    let bits = simd.transmute_u32s_f32s(scaled);
    let mantissa = simd.and_u32s(bits, u32s(MANTISSA));
    let halved = simd.greater_than_u32s(mantissa, u32s(SQRT_2_MANTISSA));
    // `m` gets the exponent of [1/2, 1) or of [1, 2).
    let m_exponent = simd.select_u32s(halved, u32s(0x3f00_0000), u32s(0x3f80_0000));
    let m = simd.transmute_f32s_u32s(simd.or_u32s(mantissa, m_exponent));
    // The biased exponent, one more where `m` was halved, as a float.
    let biased = simd.wrapping_dyn_shr_u32s(bits, u32s(23));
    let biased = simd.add_u32s(biased, simd.select_u32s(halved, u32s(1), u32s(0)));
    let biased = simd.sub_f32s(
        simd.transmute_f32s_u32s(simd.or_u32s(biased, u32s(TWO_23_BITS))),
        f32s(TWO_23),
    );
    let bias = simd.select_f32s(subnormal, f32s(127.0 + 25.0), f32s(127.0));
    let e = simd.sub_f32s(biased, bias);
    let f = simd.sub_f32s(m, f32s(1.0));
    let s = simd.div_f32s(f, simd.add_f32s(f, f32s(2.0)));
    let z = simd.mul_f32s(s, s);
    let mut r = f32s(2.0 / 9.0);
    for c in [2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0] {
        r = simd.mul_add_f32s(r, z, f32s(c));
    }
    let r = simd.mul_f32s(r, z);
    let ln_m = simd.negate_mul_add_f32s(s, simd.sub_f32s(f, r), f);
    let low = simd.mul_add_f32s(e, f32s(LN2_LO), ln_m);
    let result = simd.mul_add_f32s(e, f32s(LN2_HI), low);
    // NaN for negatives and NaN (no comparison holds for NaN), then the ends.
    let result = simd.select_f32s(simd.greater_than_or_equal_f32s(x, f32s(0.0)), result, f32s(f32::NAN));
    let result = simd.select_f32s(simd.equal_f32s(x, f32s(0.0)), f32s(f32::NEG_INFINITY), result);
    simd.select_f32s(simd.equal_f32s(x, f32s(f32::INFINITY)), f32s(f32::INFINITY), result)
}

/// [`ln`] of one value, inlined (no library call); the same value as a
/// vector lane's.
#[inline(always)]
pub(crate) fn ln_one(x: f32) -> f32 {
    ln(pulp::Scalar::new(), x)
}

/// Whether each lane is finite (neither infinite nor NaN).
#[inline(always)]
fn is_finite<S: Simd>(simd: S, x: S::f32s) -> S::m32s {
    simd.less_than_f32s(simd.abs_f32s(x), simd.splat_f32s(f32::INFINITY))
}

/// `ln(1 + x)` per lane to a few roundings, from one [`ln`]: with `u = 1 +
/// x` rounded, `ln(u) * x / (u - 1)` corrects the rounding of `u`
/// (Goldberg's way; `u - 1` is exact). `x` where `u` rounds to 1, and
/// `ln(u)` where `u` is infinite or NaN.
#[inline(always)]
pub(crate) fn ln_1p<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let u = simd.add_f32s(x, simd.splat_f32s(1.0));
    let ln_u = ln(simd, u);
    let corrected = simd.mul_f32s(ln_u, simd.div_f32s(x, simd.sub_f32s(u, simd.splat_f32s(1.0))));
    let result = simd.select_f32s(is_finite(simd, u), corrected, ln_u);
    simd.select_f32s(simd.equal_f32s(u, simd.splat_f32s(1.0)), x, result)
}

/// `e^x - 1` per lane to a few roundings, from one [`exp`] and one [`ln`]:
/// with `u = e^x` as computed, `(u - 1) * x / ln(u)` (Kahan's way: the
/// quotient is `(e^t - 1) / t` at the `t = ln u` that `u` stands for, which
/// varies slowly, so the error of `u` mostly cancels). `x` where `u` rounds
/// to 1, -1 where `u - 1` does. For `x` in [`exp`]'s range, up to 88.
#[inline(always)]
pub(crate) fn exp_m1<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let one = simd.splat_f32s(1.0);
    let u = exp(simd, x);
    let u_m1 = simd.sub_f32s(u, one);
    let result = simd.mul_f32s(u_m1, simd.div_f32s(x, ln(simd, u)));
    let result = simd.select_f32s(simd.equal_f32s(u_m1, simd.splat_f32s(-1.0)), u_m1, result);
    simd.select_f32s(simd.equal_f32s(u, one), x, result)
}

/// `z - shift` per lane, computed as `z + (-shift)`: the same number for
/// every input (IEEE subtraction is the addition of the negation), but x86
/// can take an addition's operand straight from memory, and a
/// subtraction's minuend it cannot, so a row's load folds into it.
#[inline(always)]
pub(crate) fn minus<S: Simd>(simd: S, z: S::f32s, shift: f32) -> S::f32s {
    simd.add_f32s(z, simd.splat_f32s(-shift))
}

/// `max(x, low)` per lane with NaN kept. In vector code one `max` with `x`
/// second: x86's `maxps` returns its second operand when either is NaN, and
/// NEON's `fmax` returns NaN. The scalar fallback's `f32::max` would drop
/// the NaN, so there a lane is replaced only when it compares below `low`,
/// which NaN never does (`exp_is_within_a_rounding_on_every_arch` checks
/// NaN on each instruction set).
#[inline(always)]
fn clamp_below<S: Simd>(simd: S, x: S::f32s, low: f32) -> S::f32s {
    let low = simd.splat_f32s(low);
    if S::IS_SCALAR {
        simd.select_f32s(simd.less_than_f32s(x, low), low, x)
    } else {
        simd.max_f32s(low, x)
    }
}

/// `max(x, 0)` per lane.
#[inline(always)]
pub(crate) fn above_zero<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    simd.max_f32s(x, simd.splat_f32s(0.0))
}

/// The lanes of a vector that hold the first `len` elements of a tail.
#[inline(always)]
fn tail_mask<S: Simd>(simd: S, len: usize) -> S::m32s {
    let (iota, _) = S::as_simd_f32s(&IOTA[..S::F32_LANES]);
    simd.less_than_f32s(iota[0], simd.splat_f32s(len as f32))
}

/// A per-lane function of a row's logits `z` and a per-class value `w` at the
/// same positions: what [`sum`] adds up and [`store`] writes. A trait rather
/// than a closure so that it is always inlined into the loop, which is
/// compiled for the instruction set `pulp` picked.
pub(crate) trait LaneMap<S: Simd>: Copy {
    fn apply(self, simd: S, z: S::f32s, w: S::f32s) -> S::f32s;

    /// `acc + apply(z, w)`. A map whose last step is a multiplication
    /// overrides it with one multiply-add: an instruction fewer per vector
    /// and one rounding fewer per term.
    #[inline(always)]
    fn add_to(self, simd: S, acc: S::f32s, z: S::f32s, w: S::f32s) -> S::f32s {
        simd.add_f32s(acc, self.apply(simd, z, w))
    }

    /// `(apply(z, w), add_to(acc, z, w))`, their common work done once: a
    /// sum that keeps its values adds them as one that does not, so a row's
    /// sum does not depend on which ran.
    #[inline(always)]
    fn apply_and_add(self, simd: S, acc: S::f32s, z: S::f32s, w: S::f32s) -> (S::f32s, S::f32s) {
        let v = self.apply(simd, z, w);
        (v, simd.add_f32s(acc, v))
    }
}

/// The largest element of `z` (a NaN may or may not be skipped: see
/// [`keep_max`]); an empty or all `-inf` row gives `-inf`. Four accumulators,
/// as one `max` per vector would wait on the previous one.
#[inline(always)]
pub(crate) fn max<S: Simd>(simd: S, z: &[f32]) -> f32 {
    let low = simd.splat_f32s(f32::NEG_INFINITY);
    let (head, tail) = S::as_simd_f32s(z);
    let mut acc = [low; 4];
    let mut quads = head.chunks_exact(4);
    for quad in &mut quads {
        for (a, &v) in acc.iter_mut().zip(quad) {
            *a = keep_max(simd, *a, v);
        }
    }
    for &v in quads.remainder() {
        acc[0] = keep_max(simd, acc[0], v);
    }
    if !tail.is_empty() {
        let v = simd.select_f32s(tail_mask(simd, tail.len()), simd.partial_load_f32s(tail), low);
        acc[1] = keep_max(simd, acc[1], v);
    }
    simd.reduce_max_f32s(keep_max(
        simd,
        keep_max(simd, acc[0], acc[1]),
        keep_max(simd, acc[2], acc[3]),
    ))
}

/// `max(acc, v)` per lane, one instruction. Where `v` is NaN, x86 and the
/// scalar fallback keep `acc` and NEON gives NaN: either way the NaN also
/// reaches the row's sums, so the row's loss is NaN whatever the maximum.
#[inline(always)]
fn keep_max<S: Simd>(simd: S, acc: S::f32s, v: S::f32s) -> S::f32s {
    simd.max_f32s(v, acc)
}

/// Partial sums per lane: vector `i` of a row goes to accumulator `i % 4`
/// (the tail to the next one in turn), so a sum waits on one addition in
/// four, and each accumulator rounds a quarter of the terms (a row of 1203
/// on the scalar fallback would otherwise be one chain of 1203 roundings).
const ACCUMULATORS: usize = 4;

/// Vectors per loop step of [`store`]: as many as [`fold`] takes per step.
const STORE_STEP: usize = ACCUMULATORS;

/// The accumulators added in a fixed order, then their lanes.
#[inline(always)]
fn total<S: Simd>(simd: S, acc: [S::f32s; ACCUMULATORS]) -> f32 {
    let acc = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    simd.reduce_sum_f32s(acc)
}

/// f32 values per 64-byte cache line.
pub(super) const LINE: usize = 16;

/// Values of a later row whose cache lines a row pass asks for as it goes,
/// known by address alone: nothing here reads or writes them, and a
/// prefetch never faults, so the row may be one no reference can be taken
/// to yet (a gradient row not written yet).
#[derive(Clone, Copy)]
pub(crate) struct Lines {
    start: *const f32,
    len: usize,
}

impl Lines {
    /// No row: nothing is asked for.
    pub(crate) const NONE: Lines = Lines {
        start: std::ptr::null(),
        len: 0,
    };

    /// The lines of `row`.
    pub(crate) fn of(row: &[f32]) -> Lines {
        Lines {
            start: row.as_ptr(),
            len: row.len(),
        }
    }

    /// The lines of the `len` values from `start`, which need not be
    /// initialised or borrowable; they are only asked for.
    pub(crate) fn at(start: *const f32, len: usize) -> Lines {
        Lines { start, len }
    }
}

/// What a row pass asks for while it walks its row: `read`, the logits row
/// it takes next, and `write`, a gradient row it will write later, asked
/// for with a write hint (what that compiles to: [`ask`]). A store to a
/// line the core does not own waits for the line to be read in first; a
/// fresh gradient is in no cache, and its stores stalled a gradient pass
/// whatever its arithmetic cost (benches/RESULTS.md).
#[derive(Clone, Copy)]
pub(crate) struct Ahead {
    pub(crate) read: Lines,
    pub(crate) write: Lines,
}

impl Ahead {
    /// Nothing to ask for.
    pub(crate) const NONE: Ahead = Ahead {
        read: Lines::NONE,
        write: Lines::NONE,
    };
}

/// Asks for the cache line that holds value `at` of `lines`' row, with the
/// write hint when `WRITE`; a hint that never faults (nothing off x86-64).
/// `at` is within the row.
///
/// The write hint is `PREFETCHW` only where the build enables `prfchw`;
/// the instruction sets the row passes are compiled for do not, and it
/// comes out as `PREFETCHT0`. A line that no other core holds then
/// arrives exclusive, and the store takes it over with no second request:
/// an explicit `PREFETCHW` measured the same (benches/RESULTS.md).
#[inline(always)]
fn ask<const WRITE: bool>(lines: Lines, at: usize) {
    #[cfg(test)]
    tests::asked(WRITE, lines.start.wrapping_add(at));
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        let line = lines.start.wrapping_add(at).cast();
        // SAFETY: a prefetch never faults, and SSE is part of x86_64
        // (`wrapping_add` reads nothing).
        unsafe {
            if WRITE {
                _mm_prefetch::<_MM_HINT_ET0>(line);
            } else {
                _mm_prefetch::<_MM_HINT_T0>(line);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (lines, at);
}

/// Asks for the cache lines that hold value `at` of `ahead`'s rows, where
/// they have one.
#[inline(always)]
fn prefetch_at(ahead: Ahead, at: usize) {
    if at < ahead.read.len {
        ask::<false>(ahead.read, at);
    }
    if at < ahead.write.len {
        ask::<true>(ahead.write, at);
    }
}

/// Asks for the lines of `lines`' row that start in values `from..to`.
/// A step that lies inside the row (all but a row's last) is checked
/// once, not line by line: its requests are then straight-line code, with
/// no compare and branch per line in the loop that calls it.
#[inline(always)]
fn ask_step<const WRITE: bool>(lines: Lines, from: usize, to: usize) {
    let first = from.next_multiple_of(LINE);
    if to <= lines.len {
        for at in (first..to).step_by(LINE) {
            ask::<WRITE>(lines, at);
        }
    } else {
        for at in (first..to.min(lines.len)).step_by(LINE) {
            ask::<WRITE>(lines, at);
        }
    }
}

/// Asks for the lines of `ahead`'s rows from value `from` on: what a loop
/// over a shorter row has not asked for yet.
#[inline(always)]
pub(crate) fn prefetch_from(ahead: Ahead, from: usize) {
    let len = ahead.read.len.max(ahead.write.len);
    for at in (from..len).step_by(LINE) {
        prefetch_at(ahead, at);
    }
    // The last values' lines, which a step of one line can miss when a row
    // does not start on a line.
    for last in [ahead.read.len, ahead.write.len] {
        if last > 0 {
            prefetch_at(ahead, last - 1);
        }
    }
}

/// Asks for the lines that start in values `from..from + len` of `ahead`'s
/// rows (counted from the row's start), `len` a loop step's values: one
/// request per line and row whatever the vector width.
#[inline(always)]
fn prefetch_step(ahead: Ahead, from: usize, len: usize) {
    ask_step::<false>(ahead.read, from, from + len);
    ask_step::<true>(ahead.write, from, from + len);
}

/// The one loop behind the sums: `sum_j map(z_j, w_j)` over two equally
/// long slices and, when `KEEP`, every `map(z_j, w_j)` in `kept`. As it
/// walks `z` it asks for the same positions of `ahead`'s rows (see
/// [`sum`]).
#[inline(always)]
fn fold<S: Simd, M: LaneMap<S>, const KEEP: bool>(
    simd: S,
    map: M,
    z: &[f32],
    w: &[f32],
    kept: &mut [f32],
    ahead: Ahead,
) -> f32 {
    let (zh, zt) = S::as_simd_f32s(z);
    let (wh, wt) = S::as_simd_f32s(&w[..z.len()]);
    let (kh, kt) = S::as_mut_simd_f32s(if KEEP { &mut kept[..z.len()] } else { &mut [] });
    let zero = simd.splat_f32s(0.0);
    // Indexed by constants only (the loops below unroll), so that the
    // accumulators live in registers: an index known only at run time would
    // keep them in memory, stored on every step of the loop.
    let mut acc = [zero; ACCUMULATORS];
    let (zq, zr) = zh.as_chunks::<ACCUMULATORS>();
    let (wq, wr) = wh.as_chunks::<ACCUMULATORS>();
    let (kq, kr) = kh.as_chunks_mut::<ACCUMULATORS>();
    if KEEP {
        // True by construction (`kept` is cut to `z`'s length); said so
        // that the stores below need no bounds check of their own.
        assert!(kq.len() == zq.len() && kr.len() == zr.len());
    }
    let step = ACCUMULATORS * S::F32_LANES;
    for (i, (zs, ws)) in zq.iter().zip(wq).enumerate() {
        prefetch_step(ahead, i * step, step);
        for k in 0..ACCUMULATORS {
            if KEEP {
                (kq[i][k], acc[k]) = map.apply_and_add(simd, acc[k], zs[k], ws[k]);
            } else {
                acc[k] = map.add_to(simd, acc[k], zs[k], ws[k]);
            }
        }
    }
    prefetch_from(ahead, zq.len() * step);
    for k in 0..ACCUMULATORS {
        if k < zr.len() {
            if KEEP {
                (kr[k], acc[k]) = map.apply_and_add(simd, acc[k], zr[k], wr[k]);
            } else {
                acc[k] = map.add_to(simd, acc[k], zr[k], wr[k]);
            }
        }
    }
    if !zt.is_empty() {
        let v = map.apply(simd, simd.partial_load_f32s(zt), simd.partial_load_f32s(wt));
        if KEEP {
            simd.partial_store_f32s(kt, v);
        }
        let v = simd.select_f32s(tail_mask(simd, zt.len()), v, zero);
        for (k, a) in acc.iter_mut().enumerate() {
            if k == zr.len() {
                *a = simd.add_f32s(*a, v);
            }
        }
    }
    total(simd, acc)
}

/// `sum_j map(z_j, w_j)` over two equally long slices.
///
/// `ahead` holds the rows after this one ([`Ahead`]): the loop asks for
/// their cache lines, a few per step, so that they arrive while this row's
/// arithmetic runs. A row pass works in L1 and misses nowhere, so the
/// hardware prefetcher, trained by misses, would have stopped by then; and
/// asking for a whole row at once stalls once the core's miss buffers are
/// full (benches/RESULTS.md). Every value of `ahead`'s rows is asked for,
/// their tails included, whatever the length of `z`.
#[inline(always)]
pub(crate) fn sum<S: Simd, M: LaneMap<S>>(simd: S, map: M, z: &[f32], w: &[f32], ahead: Ahead) -> f32 {
    fold::<S, M, false>(simd, map, z, w, &mut [], ahead)
}

/// [`sum`], keeping every `map(z_j, w_j)` in `kept` for a later pass.
#[inline(always)]
pub(crate) fn sum_keeping<S: Simd, M: LaneMap<S>>(
    simd: S,
    map: M,
    z: &[f32],
    w: &[f32],
    kept: &mut [f32],
    ahead: Ahead,
) -> f32 {
    fold::<S, M, true>(simd, map, z, w, kept, ahead)
}

/// `out_j = map(z_j, w_j)` over three equally long slices, asking for
/// `ahead`'s cache lines as [`sum`] does.
#[inline(always)]
pub(crate) fn store<S: Simd, M: LaneMap<S>>(simd: S, map: M, z: &[f32], w: &[f32], out: &mut [f32], ahead: Ahead) {
    let (zh, zt) = S::as_simd_f32s(z);
    let (wh, wt) = S::as_simd_f32s(&w[..z.len()]);
    let (oh, ot) = S::as_mut_simd_f32s(&mut out[..z.len()]);
    // One check of the prefetch's bounds and one loop count per step of
    // `STORE_STEP` vectors rather than per vector.
    let (zq, zr) = zh.as_chunks::<STORE_STEP>();
    let (wq, wr) = wh.as_chunks::<STORE_STEP>();
    let (oq, or) = oh.as_chunks_mut::<STORE_STEP>();
    let step = STORE_STEP * S::F32_LANES;
    for (i, ((os, zs), ws)) in oq.iter_mut().zip(zq).zip(wq).enumerate() {
        prefetch_step(ahead, i * step, step);
        for k in 0..STORE_STEP {
            os[k] = map.apply(simd, zs[k], ws[k]);
        }
    }
    prefetch_from(ahead, zq.len() * step);
    for ((o, &zv), &wv) in or.iter_mut().zip(zr).zip(wr) {
        *o = map.apply(simd, zv, wv);
    }
    if !zt.is_empty() {
        let v = map.apply(simd, simd.partial_load_f32s(zt), simd.partial_load_f32s(wt));
        simd.partial_store_f32s(ot, v);
    }
}

/// `row_j *= factor`, in place.
#[inline(always)]
pub(crate) fn scale<S: Simd>(simd: S, factor: f32, row: &mut [f32]) {
    let factor = simd.splat_f32s(factor);
    let (head, tail) = S::as_mut_simd_f32s(row);
    for v in head {
        *v = simd.mul_f32s(*v, factor);
    }
    if !tail.is_empty() {
        let v = simd.mul_f32s(simd.partial_load_f32s(tail), factor);
        simd.partial_store_f32s(tail, v);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pulp::WithSimd;

    struct ExpCheck;

    impl WithSimd for ExpCheck {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let scale = ExpScale::of(simd);
            // Where the scale is right for every `x`, from below the
            // subnormals to past the f32 range, and values past that range;
            // elsewhere up to 88, and none past it.
            let (from, to, beyond): (f32, f32, &[f32]) = match scale {
                ExpScale::Scalef => (-110.0, 95.0, &[1e3, 1e6, 1e10, 1e20, f32::MAX, f32::INFINITY]),
                ExpScale::Bits => (-90.0, 88.0, &[]),
            };
            let xs: Vec<f32> = (0..=4000)
                .map(|i| from + i as f32 * ((to - from) / 4000.0))
                .chain([88.0, 88.72, 88.73, 0.0, -0.5, 0.5, -1e-8, -103.2, -103.3])
                // Densely where the bound is tightest (and every step of
                // AVX-512's table many times over).
                .chain((0..=40_000).map(|i| -2.0 + i as f32 * 1e-4))
                .filter(|&x| x <= to)
                // Masked logits' values.
                .chain([-1e30, f32::MIN, f32::NEG_INFINITY])
                .chain(beyond.iter().copied())
                .collect();
            let out = each(simd, &xs, |x| exp(simd, x));
            for (&x, &got) in xs.iter().zip(&out) {
                let want = (x as f64).exp();
                let rel_bound = 1.2e-7 + (x as f64).abs() * 1.4e-8;
                if want > f32::MAX as f64 {
                    assert_eq!(got, f32::INFINITY, "e^{x}");
                } else if want >= f32::MIN_POSITIVE as f64 {
                    let rel = ((got as f64) - want).abs() / want;
                    assert!(rel < rel_bound, "e^{x} = {got}, want {want} ({rel:e} > {rel_bound:e})");
                } else if scale == ExpScale::Scalef {
                    // The subnormal nearest `2^f` times `2^n`.
                    let relative = if want > 0.0 { want * rel_bound } else { 0.0 };
                    let bound = relative + 0.5 * 2f64.powi(-149);
                    assert!(((got as f64) - want).abs() <= bound, "e^{x} = {got:e}, want {want:e}");
                } else if want < 2e-38 {
                    assert!(got == 0.0 || (got as f64) < 2e-38, "e^{x} = {got}");
                } else {
                    assert!(((got as f64) - want).abs() < 1e-44, "e^{x} = {got}, want {want}");
                }
            }
            // Capped: the same below the cap, at least its value above it.
            let cap = 21.0;
            let xs: Vec<f32> = (0..400)
                .map(|i| 15.0 + i as f32 * 0.25)
                .chain([f32::MAX, f32::INFINITY])
                .collect();
            let capped = each(simd, &xs, |x| exp_capped(simd, x, cap));
            let plain = each(simd, &xs, |x| exp(simd, simd.min_f32s(x, simd.splat_f32s(cap))));
            for ((&x, &got), &at_cap) in xs.iter().zip(&capped).zip(&plain) {
                if x <= cap {
                    assert_eq!(got, at_cap, "capped e^{x}");
                } else {
                    assert!(got >= at_cap * (1.0 - 1e-6), "capped e^{x} = {got}, below e^{cap}");
                }
            }
            let nan = each(simd, &[f32::NAN; 3], |x| exp_capped(simd, x, cap));
            let at_cap = (cap as f64).exp() as f32 * (1.0 - 1e-6);
            assert!(nan.iter().all(|&v| v.is_nan() || v >= at_cap), "capped e^NaN = {nan:?}");
            let special = [f32::NAN, f32::NEG_INFINITY, 0.0];
            let mut lanes = vec![1.0f32; S::F32_LANES];
            lanes[..special.len().min(S::F32_LANES)].copy_from_slice(&special[..special.len().min(S::F32_LANES)]);
            let (v, _) = S::as_simd_f32s(&lanes);
            let mut got = vec![0.0f32; S::F32_LANES];
            let (g, _) = S::as_mut_simd_f32s(&mut got);
            g[0] = exp(simd, v[0]);
            assert!(got[0].is_nan(), "e^NaN = {}", got[0]);
            if S::F32_LANES >= 3 {
                assert_eq!(got[1], 0.0);
                assert_eq!(got[2], 1.0);
            }
        }
    }

    thread_local! {
        /// The addresses `ask` was given on this thread, with its write
        /// flag, while a test records them (`None` otherwise: the other
        /// tests' row passes record nothing).
        static ASKED: std::cell::RefCell<Option<Vec<(bool, usize)>>> = const { std::cell::RefCell::new(None) };
    }

    pub(super) fn asked(write: bool, value: *const f32) {
        ASKED.with(|a| {
            if let Some(asked) = a.borrow_mut().as_mut() {
                asked.push((write, value as usize));
            }
        });
    }

    /// `z + w`: a map for the loops whose requests are checked.
    #[derive(Clone, Copy)]
    struct Plus;

    impl<S: Simd> LaneMap<S> for Plus {
        #[inline(always)]
        fn apply(self, simd: S, z: S::f32s, w: S::f32s) -> S::f32s {
            simd.add_f32s(z, w)
        }
    }

    /// Each loop that walks a row asks for every cache line of `ahead`'s
    /// rows, and for nothing outside them, whatever the lengths of the row
    /// and of the rows ahead and wherever those start within a line.
    struct AheadCheck;

    impl WithSimd for AheadCheck {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let values = vec![1.0f32; 8192];
            let mut out = vec![0.0f32; 2048];
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 100, 1203] {
                let z = &values[..len];
                for (read_len, write_len) in [(0, 0), (5, 0), (1203, 0), (1205, 1205), (0, 77), (2000, 33)] {
                    for shift in [0, 1, 7, 15] {
                        let read = &values[2048 + shift..][..read_len];
                        let write = &values[4096 + shift..][..write_len];
                        let ahead = Ahead {
                            read: Lines::of(read),
                            write: Lines::of(write),
                        };
                        for which in ["sum", "sum_keeping", "store"] {
                            ASKED.with(|a| a.replace(Some(Vec::new())));
                            match which {
                                "sum" => drop(sum(simd, Plus, z, z, ahead)),
                                "sum_keeping" => drop(sum_keeping(simd, Plus, z, z, &mut out, ahead)),
                                _ => store(simd, Plus, z, z, &mut out, ahead),
                            }
                            let asked = ASKED.with(|a| a.take()).unwrap_or_default();
                            for (write, row) in [(false, read), (true, write)] {
                                let start = row.as_ptr() as usize;
                                let end = start + 4 * row.len();
                                let lines: std::collections::BTreeSet<usize> = asked
                                    .iter()
                                    .filter(|&&(w, _)| w == write)
                                    .map(|&(_, at)| {
                                        assert!(
                                            (start..end).contains(&at),
                                            "loop {which} asked outside its row (length {len}, row {}, shift {shift})",
                                            row.len()
                                        );
                                        at / 64
                                    })
                                    .collect();
                                let want: std::collections::BTreeSet<usize> = match row.len() {
                                    0 => Default::default(),
                                    _ => (start / 64..=(end - 1) / 64).collect(),
                                };
                                assert_eq!(
                                    lines,
                                    want,
                                    "loop {which}, length {len}, row of {} from value {shift}, write {write}",
                                    row.len()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_loops_ask_for_every_line_ahead_and_nothing_else() {
        for_each_arch(|| AheadCheck);
    }

    #[test]
    fn exp_is_within_a_rounding_on_every_arch() {
        for_each_arch(|| ExpCheck);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_table_holds_the_sixteenths_of_an_octave() {
        for (i, &entry) in EXP_TABLE.iter().enumerate() {
            assert_eq!(entry, 2f64.powf(i as f64 / 16.0) as f32, "2^({i}/16)");
        }
    }

    /// `f` over `xs` on one instruction set, every lane of every vector
    /// and the tail.
    fn each<S: Simd>(simd: S, xs: &[f32], f: impl Fn(S::f32s) -> S::f32s) -> Vec<f32> {
        let mut out = vec![0.0f32; xs.len()];
        let (xh, xt) = S::as_simd_f32s(xs);
        let (oh, ot) = S::as_mut_simd_f32s(&mut out);
        for (o, &x) in oh.iter_mut().zip(xh) {
            *o = f(x);
        }
        simd.partial_store_f32s(ot, f(simd.partial_load_f32s(xt)));
        out
    }

    /// Checks `got` against float64's `want` within `roundings(x)` f32
    /// roundings of the result (and 1e-45 absolute, for results near 0);
    /// infinities and NaN exactly.
    pub(crate) fn within(
        name: &str,
        xs: &[f32],
        got: &[f32],
        want: impl Fn(f64) -> f64,
        roundings: impl Fn(f64) -> f64,
    ) {
        for (&x, &got) in xs.iter().zip(got) {
            let roundings = roundings(x as f64);
            let want = want(x as f64);
            if !want.is_finite() || want.abs() > f32::MAX as f64 {
                let want = want as f32;
                assert!(
                    got == want || (got.is_nan() && want.is_nan()),
                    "{name}({x:e}) = {got:e}, want {want:e}"
                );
                continue;
            }
            let bound = roundings * want.abs() * f32::EPSILON as f64 + 1e-45;
            let err = (got as f64 - want).abs();
            assert!(
                err <= bound,
                "{name}({x:e}) = {got:e}, want {want:e} (off {err:e}, bound {bound:e})"
            );
        }
    }

    struct LogCheck;

    impl WithSimd for LogCheck {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            // Every 4099th positive f32 (all exponents, subnormals
            // included), the values around the points where the mantissa is
            // split or 1 + x rounds, and the ends.
            let mut xs: Vec<f32> = (1..0x7f80_0000u32).step_by(4099).map(f32::from_bits).collect();
            for centre in [1.0f32, std::f32::consts::SQRT_2, 0.5, 2.0, 1e-7, 6e-8] {
                let bits = centre.to_bits();
                xs.extend((bits - 2000..bits + 2000).map(f32::from_bits));
            }
            xs.extend([
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NAN,
                -1.0,
                -1e-40,
                f32::NEG_INFINITY,
                f32::MAX,
                1.0,
            ]);
            let got = each(simd, &xs, |x| ln(simd, x));
            within("ln", &xs, &got, f64::ln, |_| 1.0);
            let got = each(simd, &xs, |x| ln_1p(simd, x));
            within("ln_1p", &xs, &got, f64::ln_1p, |_| 2.0);
            // ln_1p's own domain below 0: (-1, 0).
            let below: Vec<f32> = (0..20000)
                .map(|i| -1.0 + (i as f32 + 0.5) / 20000.0)
                .chain([-1.0, -1e-30, -0.5])
                .collect();
            let got = each(simd, &below, |x| ln_1p(simd, x));
            within("ln_1p", &below, &got, f64::ln_1p, |_| 2.0);
            let one = |x| ln_1p(pulp::Scalar::new(), x);
            assert_eq!(one(0.0), 0.0);
            assert_eq!(one(-1.0), f32::NEG_INFINITY);
            assert_eq!(one(f32::INFINITY), f32::INFINITY);
            assert_eq!(one(f32::MAX), (f32::MAX as f64).ln() as f32);
            assert!(one(f32::NAN).is_nan());
        }
    }

    #[test]
    fn logarithms_are_within_a_rounding_or_two_on_every_arch() {
        for_each_arch(|| LogCheck);
    }

    struct ExpM1Check;

    impl WithSimd for ExpM1Check {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            let mut xs: Vec<f32> = (0..40000).map(|i| -100.0 + i as f32 * 0.0047).collect();
            // Near 0, where e^x - 1 is as small as x.
            xs.extend((1..4000u32).flat_map(|i| {
                let x = f32::from_bits(0x3300_0000 + i * 0x3000);
                [x, -x]
            }));
            xs.extend([0.0, -0.0, f32::NEG_INFINITY, f32::NAN, 1e-30, -1e-30, 88.0]);
            let got = each(simd, &xs, |x| exp_m1(simd, x));
            // Three roundings, and above 0 the exponential's own `|x| * 1.4e-8`
            // (its rounding of `log2 e`), which the quotient cannot correct
            // once `e^x - 1` is `e^x`.
            let bound = |x: f64| 3.0 + x.max(0.0) * 1.4e-8 / f32::EPSILON as f64;
            within("exp_m1", &xs, &got, f64::exp_m1, bound);
        }
    }

    #[test]
    fn exp_m1_is_within_a_few_roundings_on_every_arch() {
        for_each_arch(|| ExpM1Check);
    }

    /// Runs `op()` under the scalar fallback and every vector instruction
    /// set this processor has.
    pub(crate) fn for_each_arch<Op: WithSimd<Output = ()>>(op: impl Fn() -> Op) {
        op().with_simd(pulp::Scalar::new());
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v3) = pulp::x86::V3::try_new() {
                Simd::vectorize(v3, op());
            }
            if let Some(v4) = pulp::x86::V4::try_new() {
                Simd::vectorize(v4, op());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        pulp::Arch::new().dispatch(op());
    }
}
