//! The cumulative counts: accumulation, exactness, checkpoints.

mod common;

use common::*;
use seesaw_loss::{Backend, Error, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// A fresh folder for this test process and a file path inside it.
fn scratch_file(tag: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("seesaw-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    (dir, file)
}

#[test]
fn counts_accumulate_over_steps_with_background_last() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root() / "seesaw", SeesawConfig::detection(3)).unwrap();
    let x = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
    loss.forward(&x, &Tensor::from_slice(&[0i64, 3, 3, 1]), None, None)
        .unwrap();
    loss.forward(&x, &Tensor::from_slice(&[3i64, 3, 3, 0]), None, None)
        .unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [2, 1, 0, 5]);
    assert_eq!(loss.cum_samples().unwrap().kind(), Kind::Int64);
}

#[test]
fn counts_stay_exact_past_two_to_the_24() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(2)).unwrap();
    set_counts(&vs, &[1i64 << 24, 7]);
    loss.forward(
        &Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)),
        &Tensor::from_slice(&[0i64]),
        None,
        None,
    )
    .unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [(1 << 24) + 1, 7]);
}

#[test]
fn checkpoint_round_trip_resumes_with_identical_losses() {
    let (dir, file) = scratch_file("ckpt", "model.safetensors");
    let batches: Vec<(Tensor, Tensor)> = (0..4)
        .map(|i| {
            (
                random_scores(16, 9, i).to_kind(Kind::Float),
                random_labels(16, 8, 50 + i),
            )
        })
        .collect();

    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root() / "loss", SeesawConfig::detection(7)).unwrap();
    for (x, y) in &batches[..2] {
        loss.forward(x, y, None, None).unwrap();
    }
    vs.save(&file).unwrap();
    let continued: Vec<f64> = batches[2..]
        .iter()
        .map(|(x, y)| loss.forward(x, y, None, None).unwrap().total().double_value(&[]))
        .collect();

    let mut vs2 = nn::VarStore::new(Device::Cpu);
    let mut resumed = SeesawLoss::new(vs2.root() / "loss", SeesawConfig::detection(7)).unwrap();
    vs2.load(&file).unwrap();
    let after_load: Vec<f64> = batches[2..]
        .iter()
        .map(|(x, y)| resumed.forward(x, y, None, None).unwrap().total().double_value(&[]))
        .collect();
    assert_eq!(continued, after_load);
    assert_eq!(
        to_i64(&loss.cum_samples().unwrap()),
        to_i64(&resumed.cum_samples().unwrap())
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn float_counts_from_a_checkpoint_are_accepted_and_made_exact_again() {
    let (dir, file) = scratch_file("float", "python.safetensors");
    // As a converted Python checkpoint would hold them: float32.
    Tensor::write_safetensors(&[("cum_samples", Tensor::from_slice(&[4.0f32, 0.0, 2.0]))], &file).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3)).unwrap();
    vs.load(&file).unwrap();
    loss.forward(
        &Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)),
        &Tensor::from_slice(&[1i64]),
        None,
        None,
    )
    .unwrap();
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [4, 1, 2]);
    assert_eq!(vs.variables()["cum_samples"].kind(), Kind::Int64);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn nan_or_negative_counts_from_a_checkpoint_are_an_error_that_changes_nothing() {
    for bad in [[1.0f32, f32::NAN, 2.0], [1.0, -3.0, 2.0], [f32::INFINITY, 0.0, 0.0]] {
        let (dir, file) = scratch_file("bad", "bad.safetensors");
        Tensor::write_safetensors(&[("cum_samples", Tensor::from_slice(&bad))], &file).unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3)).unwrap();
        vs.load(&file).unwrap();
        let before = to_vec(&vs.variables()["cum_samples"]);
        let err = loss
            .forward(
                &Tensor::zeros([1, 3], (Kind::Float, Device::Cpu)),
                &Tensor::from_slice(&[1i64]),
                None,
                None,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::Counts(_)) && err.to_string().contains("cum_samples holds"),
            "{err}"
        );
        let after = to_vec(&vs.variables()["cum_samples"]);
        assert_eq!(format!("{before:?}"), format!("{after:?}"));
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn negative_int64_counts_are_an_error_that_changes_nothing() {
    let scores = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 2]);
    for backend in [Backend::Fused, Backend::Reference] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3).backend(backend)).unwrap();
        set_counts(&vs, &[4, -2, 7]);
        let err = loss.forward(&scores, &labels, None, None).unwrap_err();
        assert!(
            matches!(err, Error::Counts(_)) && err.to_string().contains("cum_samples holds"),
            "{err}"
        );
        assert_eq!(to_i64(&loss.cum_samples().unwrap()), [4, -2, 7]);
        // Zero counts are fine.
        set_counts(&vs, &[0, 0, 0]);
        loss.forward(&scores, &labels, None, None).unwrap();
        assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 1, 1]);
    }
}

#[test]
fn converting_the_var_store_to_half_leaves_counts_exact() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(2)).unwrap();
    set_counts(&vs, &[5000i64, 3]);
    vs.half();
    loss.forward(
        &Tensor::zeros([1, 2], (Kind::Half, Device::Cpu)),
        &Tensor::from_slice(&[0i64]),
        None,
        None,
    )
    .unwrap();
    // 5001 is not representable in f16; int64 counts do not care.
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [5001, 3]);
}

#[test]
fn counts_are_registered_as_a_non_trainable_variable() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _loss = SeesawLoss::new(vs.root() / "roi_head" / "loss_cls", SeesawConfig::detection(80)).unwrap();
    assert!(vs.variables().contains_key("roi_head.loss_cls.cum_samples"));
    assert!(vs.trainable_variables().is_empty());
}

/// Counts a checkpoint leaves in a kind that cannot hold them, or with values
/// that are not counts (fractional, beyond int64), are an error of every
/// call (naming the kind), change nothing, and loading good counts mends it.
#[test]
fn counts_that_are_not_counts_are_errors_until_good_ones_are_loaded() {
    let scores = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64]);
    let cases = [
        (Tensor::from_slice(&[true, false, true]), "Bool"),
        (Tensor::from_slice(&[1.5f64, 0.0, 2.0]), "fractional"),
        (Tensor::from_slice(&[1e30f64, 0.0, 2.0]), "int64"),
    ];
    for (bad, needle) in cases {
        for backend in [Backend::Fused, Backend::Reference] {
            let (dir, file) = scratch_file("kinds", "bad.safetensors");
            Tensor::write_safetensors(&[("cum_samples", bad.shallow_clone())], &file).unwrap();
            let mut vs = nn::VarStore::new(Device::Cpu);
            let config = SeesawConfig::classification(3).backend(backend);
            let mut loss = SeesawLoss::new(vs.root(), config).unwrap();
            vs.load(&file).unwrap();
            for _ in 0..2 {
                let err = loss.forward(&scores, &labels, None, None).unwrap_err();
                assert!(matches!(err, Error::Counts(_)), "{err:?}");
                assert!(err.to_string().contains(needle), "{needle}: {err}");
            }
            let (good_dir, good) = scratch_file("kinds-good", "good.safetensors");
            Tensor::write_safetensors(&[("cum_samples", Tensor::from_slice(&[1i64, 2, 3]))], &good).unwrap();
            vs.load(&good).unwrap();
            loss.forward(&scores, &labels, None, None).unwrap();
            assert_eq!(to_i64(&loss.cum_samples().unwrap()), [1, 3, 3]);
            std::fs::remove_dir_all(dir).ok();
            std::fs::remove_dir_all(good_dir).ok();
        }
    }
}

/// A count update that would take a counter past int64 is an error that
/// changes nothing, not a wrap.
#[test]
fn a_count_update_that_would_overflow_int64_is_an_error() {
    let scores = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[1i64, 1]);
    for backend in [Backend::Fused, Backend::Reference] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3).backend(backend)).unwrap();
        let near = [0, i64::MAX - 1, 0];
        set_counts(&vs, &near);
        let err = loss.forward(&scores, &labels, None, None).unwrap_err();
        assert!(matches!(err, Error::Counts(_)), "{backend:?}: {err:?}");
        assert_eq!(to_i64(&loss.cum_samples().unwrap()), near);
    }
}

/// A truncated checkpoint is tch's error on load; the loss's counts are left
/// as they were and it keeps working.
#[test]
fn a_truncated_checkpoint_is_an_error_of_the_load_and_the_loss_keeps_working() {
    let (dir, file) = scratch_file("truncated", "counts.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::classification(3)).unwrap();
    set_counts(&vs, &[4, 5, 6]);
    vs.save(&file).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let mut other = nn::VarStore::new(Device::Cpu);
    let mut restored = SeesawLoss::new(other.root(), SeesawConfig::classification(3)).unwrap();
    assert!(other.load(&file).is_err());
    assert_eq!(to_i64(&restored.cum_samples().unwrap()), [0, 0, 0]);
    let scores = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
    restored
        .forward(&scores, &Tensor::from_slice(&[2i64]), None, None)
        .unwrap();
    assert_eq!(to_i64(&restored.cum_samples().unwrap()), [0, 0, 1]);
    loss.forward(&scores, &Tensor::from_slice(&[0i64]), None, None).unwrap();
    std::fs::remove_dir_all(dir).ok();
}
