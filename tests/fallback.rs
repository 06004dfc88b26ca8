//! When the kernels cannot be had (here: NVRTC made unavailable, under the
//! kernel emulator with the CUDA defaults), `Backend::Auto` computes on the
//! reference path and says why once, as a warning through the `log` facade;
//! `Backend::Fused` returns the reason as an error; `path_for` tells it.
//! Its own process: NVRTC's absence is remembered for the process.
#![cfg(feature = "testing")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use seesaw_loss::{testing, Backend, ComputePath, Error, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind};

/// Counts the warnings that mention the kernels.
struct Warnings;
static KERNEL_WARNINGS: AtomicUsize = AtomicUsize::new(0);

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        if record.level() == log::Level::Warn && text.contains("kernels are unavailable") {
            assert!(text.contains("NVRTC"), "the warning names the reason: {text}");
            KERNEL_WARNINGS.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

#[test]
fn without_nvrtc_auto_falls_back_with_one_warning_and_fused_is_an_error() {
    log::set_logger(&Warnings).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    testing::hide_nvrtc();
    testing::emulate_kernels();

    let c = 40;
    let vs = nn::VarStore::new(Device::Cpu);
    let mut auto = SeesawLoss::new(vs.root() / "auto", SeesawConfig::detection(c)).unwrap();
    let mut reference = SeesawLoss::new(
        vs.root() / "reference",
        SeesawConfig::detection(c).backend(Backend::Reference),
    )
    .unwrap();
    let choice = auto.path_for(Device::Cpu, Kind::Float).unwrap();
    assert_eq!(choice.path, ComputePath::Reference);
    assert!(choice.reason.contains("NVRTC"), "{}", choice.reason);

    for step in 0..3 {
        let scores = random_scores(64, c + 2, 5 + step).to_kind(Kind::Float);
        let labels = random_labels(64, 2 * c, 6 + step).clamp_max(c);
        let launches = testing::kernel_launches();
        let a = auto.forward(&scores, &labels, None, None).unwrap();
        let b = reference.forward(&scores, &labels, None, None).unwrap();
        assert_eq!(testing::kernel_launches(), launches, "no kernel ran");
        assert_eq!(to_vec(&a.total()), to_vec(&b.total()), "step {step}");
    }
    assert_eq!(
        to_i64(&auto.cum_samples().unwrap()),
        to_i64(&reference.cum_samples().unwrap())
    );
    assert_eq!(
        KERNEL_WARNINGS.load(Ordering::SeqCst),
        1,
        "one warning, not one per call"
    );

    let mut fused = SeesawLoss::new(vs.root() / "fused", SeesawConfig::detection(c).backend(Backend::Fused)).unwrap();
    let scores = random_scores(4, c + 2, 9).to_kind(Kind::Float);
    match fused.forward(&scores, &random_labels(4, c + 1, 10), None, None) {
        Err(Error::KernelUnavailable(why)) => assert!(why.contains("NVRTC"), "{why}"),
        other => panic!("expected KernelUnavailable, got {other:?}"),
    }
    assert!(matches!(
        fused.path_for(Device::Cpu, Kind::Float),
        Err(Error::KernelUnavailable(_))
    ));
    assert_eq!(to_i64(&fused.cum_samples().unwrap()), vec![0; c as usize + 1]);
    assert_eq!(KERNEL_WARNINGS.load(Ordering::SeqCst), 1);
}
