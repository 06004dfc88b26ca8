//! What the CPU benchmarks ran on, printed before their results: the
//! processor's identity and two rates measured on the spot.
//!
//! The machines these benchmarks run on are virtual, and the host behind
//! them changes from one run to another without the guest's brand string
//! saying so ("AMD EPYC" either way). The loss pass is bound by its multiply-adds, and
//! its first half takes about 1.65 times the cycles on a core that issues
//! one 512-bit multiply-add per cycle as on one that issues two
//! (benches/RESULTS.md), so a result is only comparable with another taken
//! on the same kind of core.

/// One line: vendor, family and model (CPUID), the clock measured with a
/// chain of dependent additions, and on AVX-512 the 512-bit multiply-adds
/// the core issues per cycle (about 1 on a core that splits them into two
/// halves, about 2 on one with full-width units).
pub fn describe() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        x86::describe()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("{} (no processor probe for this architecture)", std::env::consts::ARCH)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::timed;
    use std::arch::asm;
    use std::arch::x86_64::__cpuid;

    /// Loop rounds of each probe run: a few milliseconds.
    const ROUNDS: u64 = 2_000_000;

    /// Runs of each probe; the fastest counts, as a run the scheduler cut
    /// into (another process on the core) only reads slower.
    const RUNS: usize = 7;

    /// The shortest time of [`RUNS`] runs of `probe`, in nanoseconds.
    fn fastest(probe: impl Fn()) -> f64 {
        (0..RUNS)
            .map(|_| timed(&probe).as_nanos() as f64)
            .fold(f64::INFINITY, f64::min)
    }

    pub fn describe() -> String {
        let (vendor, family, model) = identity();
        let ghz = clock_ghz();
        let mut line = format!("{vendor} family {family:#x} model {model:#x}, {ghz:.2} GHz");
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has AVX-512F (checked just above).
            let per_ns = unsafe { multiply_adds_per_ns() };
            line += &format!(", {:.2} 512-bit multiply-adds per cycle", per_ns / ghz);
        }
        line
    }

    /// Vendor string, and family and model with their extended parts added
    /// as the vendors' manuals say.
    fn identity() -> (String, u32, u32) {
        let leaf0 = __cpuid(0);
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        let eax = __cpuid(1).eax;
        let base_family = (eax >> 8) & 0xf;
        let base_model = (eax >> 4) & 0xf;
        // The extended family counts only past 0xf; the extended model is
        // part of the model for family 0xf (AMD, and Intel's NetBurst) and
        // for Intel's family 6.
        let family = match base_family {
            0xf => base_family + ((eax >> 20) & 0xff),
            _ => base_family,
        };
        let model = match base_family {
            0x6 | 0xf => base_model | (((eax >> 16) & 0xf) << 4),
            _ => base_model,
        };
        (String::from_utf8_lossy(&vendor).into_owned(), family, model)
    }

    /// The clock in GHz: additions per nanosecond in a chain of dependent
    /// ones (one cycle each on every x86-64 core; the loop's count runs
    /// beside them).
    fn clock_ghz() -> f64 {
        (4 * ROUNDS) as f64 / fastest(additions)
    }

    /// [`ROUNDS`] rounds of four dependent additions.
    fn additions() {
        let (mut x, mut n) = (0u64, ROUNDS);
        // SAFETY: registers only.
        unsafe {
            asm!(
                "2:",
                "add {x}, 1",
                "add {x}, 1",
                "add {x}, 1",
                "add {x}, 1",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        std::hint::black_box((x, n));
    }

    /// 512-bit multiply-adds per nanosecond, from [`multiply_adds`].
    ///
    /// # Safety
    /// The processor has AVX-512F.
    unsafe fn multiply_adds_per_ns() -> f64 {
        // SAFETY: as the caller promised.
        (16 * ROUNDS) as f64 / fastest(|| unsafe { multiply_adds() })
    }

    /// [`ROUNDS`] rounds of sixteen 512-bit multiply-adds in independent
    /// chains, more than the units' latency needs to stay busy, on zeros (no
    /// subnormal slow paths).
    ///
    /// # Safety
    /// The processor has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn multiply_adds() {
        let mut n = ROUNDS;
        // SAFETY: registers only; the caller checked AVX-512F.
        unsafe {
            asm!(
                "vxorps zmm16, zmm16, zmm16",
                "vxorps zmm17, zmm17, zmm17",
                "vmovaps zmm0, zmm16", "vmovaps zmm1, zmm16", "vmovaps zmm2, zmm16", "vmovaps zmm3, zmm16",
                "vmovaps zmm4, zmm16", "vmovaps zmm5, zmm16", "vmovaps zmm6, zmm16", "vmovaps zmm7, zmm16",
                "vmovaps zmm8, zmm16", "vmovaps zmm9, zmm16", "vmovaps zmm10, zmm16", "vmovaps zmm11, zmm16",
                "vmovaps zmm12, zmm16", "vmovaps zmm13, zmm16", "vmovaps zmm14, zmm16", "vmovaps zmm15, zmm16",
                "2:",
                "vfmadd213ps zmm0, zmm16, zmm17", "vfmadd213ps zmm1, zmm16, zmm17",
                "vfmadd213ps zmm2, zmm16, zmm17", "vfmadd213ps zmm3, zmm16, zmm17",
                "vfmadd213ps zmm4, zmm16, zmm17", "vfmadd213ps zmm5, zmm16, zmm17",
                "vfmadd213ps zmm6, zmm16, zmm17", "vfmadd213ps zmm7, zmm16, zmm17",
                "vfmadd213ps zmm8, zmm16, zmm17", "vfmadd213ps zmm9, zmm16, zmm17",
                "vfmadd213ps zmm10, zmm16, zmm17", "vfmadd213ps zmm11, zmm16, zmm17",
                "vfmadd213ps zmm12, zmm16, zmm17", "vfmadd213ps zmm13, zmm16, zmm17",
                "vfmadd213ps zmm14, zmm16, zmm17", "vfmadd213ps zmm15, zmm16, zmm17",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) n,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                out("zmm16") _, out("zmm17") _,
                options(nomem, nostack),
            );
        }
        std::hint::black_box(n);
    }
}
