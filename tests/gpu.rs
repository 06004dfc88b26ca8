//! The CUDA kernel against the reference path on the GPU and against the CPU
//! mirror (the device-independent checks live in `common/kernel.rs`, which
//! `tests/kernel_emulation.rs` also runs without a GPU). The tests are
//! ignored unless asked for with
//! `--include-ignored` (as `scripts/gpu-pack.sh`'s `run.sh` does), so a
//! machine without a GPU reports them as ignored, never as passed; asked for
//! on a machine without one, they fail.
//! Outputs are poisoned with NaN before each launch (`testing::poison_outputs`).

#![cfg(feature = "testing")]

mod common;

use common::*;
use seesaw_loss::{Backend, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// The GPU the tests run on; a machine without one fails them (they are
/// ignored unless asked for, so asking for them without a GPU is a mistake).
fn cuda() -> Device {
    seesaw_loss::testing::poison_outputs(true);
    assert!(
        tch::Cuda::is_available(),
        "the GPU tests were asked for (--include-ignored) but libtorch sees no CUDA device"
    );
    Device::Cuda(0)
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn kernel_matches_the_reference_on_the_gpu_over_the_sweep() {
    let dev = cuda();
    let cases = sweep_cases(200_000_000);
    let (out, grad) = kernel::matches_the_reference(dev, &cases);
    println!(
        "GPU sweep: {} cases, worst relative error outputs {out:e}, gradients {grad:e}",
        cases.len()
    );
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn kernel_matches_the_cpu_mirror() {
    let dev = cuda();
    assert_sweep(
        &sweep_cases(20_000_000),
        (Backend::Fused, dev),
        (Backend::Fused, Device::Cpu),
        7000,
    );
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn kernel_handles_a_million_rows() {
    let dev = cuda();
    let cases = [Kind::Float, Kind::BFloat16].map(|kind| SweepCase::new(true, 80, 1_000_000, kind));
    assert_sweep(&cases, (Backend::Fused, dev), (Backend::Reference, dev), 99);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn counts_update_on_the_device_matches_the_host() {
    let dev = cuda();
    kernel::counts_update_matches_the_host(dev, 100_000);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn labels_weights_and_counts_on_another_device_are_errors() {
    let dev = cuda();
    let vs = nn::VarStore::new(dev);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(3)).unwrap();
    let x = Tensor::zeros([2, 5], (Kind::Float, dev));
    let y_cpu = Tensor::from_slice(&[0i64, 1]);
    let err = loss.forward(&x, &y_cpu, None, None).unwrap_err();
    assert!(
        err.to_string().contains("labels is on Cpu but cls_score is on Cuda(0)"),
        "{err}"
    );
    let w_cpu = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let err = loss.forward(&x, &y_cpu.to_device(dev), Some(&w_cpu), None).unwrap_err();
    assert!(err.to_string().contains("label_weights is on Cpu"), "{err}");
    let vs_cpu = nn::VarStore::new(Device::Cpu);
    let mut cpu_loss = SeesawLoss::new(vs_cpu.root(), SeesawConfig::detection(3)).unwrap();
    let err = cpu_loss.forward(&x, &y_cpu.to_device(dev), None, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("cum_samples is on Cpu but cls_score is on Cuda(0)"),
        "{err}"
    );
    assert_eq!(to_i64(&loss.cum_samples().unwrap()), [0, 0, 0, 0]);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn out_of_range_labels_on_the_gpu_are_errors_not_faults() {
    let dev = cuda();
    kernel::out_of_range_labels_are_errors_not_faults(dev);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn backward_on_the_autograd_thread_reaches_the_scores() {
    let dev = cuda();
    kernel::backward_reaches_the_scores(dev);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn node_and_forward_backward_match_the_reference_on_the_gpu() {
    let dev = cuda();
    kernel::node_and_forward_backward_match_the_reference(dev);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn a_deferred_bad_batch_on_the_gpu_changes_nothing_and_errors_later() {
    let dev = cuda();
    kernel::a_deferred_bad_batch_changes_nothing_and_errors_later(dev);
    tch::Cuda::synchronize(0);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn the_default_matches_the_reference_on_the_gpu() {
    let dev = cuda();
    kernel::the_default_matches_the_reference(dev);
    tch::Cuda::synchronize(0);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn a_failed_call_takes_its_batch_back_out_on_the_device() {
    let dev = cuda();
    kernel::a_failed_call_takes_its_batch_back_out(dev);
    tch::Cuda::synchronize(0);
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn steps_on_the_gpu_are_bitwise_reproducible() {
    let dev = cuda();
    kernel::steps_are_bitwise_reproducible(dev);
}

/// The loss's launches follow libtorch's current stream: on a side stream
/// (non-blocking, so a launch on the legacy default stream would not wait
/// for it) the scores are written late, after a queue of matrix products;
/// a step that launched anywhere else would read them before they exist.
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn launches_go_on_the_callers_current_stream() {
    use seesaw_loss::testing::cuda::{use_default_stream, use_side_stream};
    let dev = cuda();
    let (c, n) = (1203, 4096);
    let labels = random_labels(n, c + 1, 21).to_device(dev);
    let target = random_scores(n, c + 2, 20).to_kind(Kind::Float).to_device(dev);
    let vs = nn::VarStore::new(dev);
    let mut on_side = SeesawLoss::new(vs.root() / "side", SeesawConfig::detection(c)).unwrap();
    let mut on_default = SeesawLoss::new(vs.root() / "default", SeesawConfig::detection(c)).unwrap();
    tch::Cuda::synchronize(0);

    use_side_stream(0).unwrap();
    let busy = Tensor::randn([4096, 4096], (Kind::Float, dev));
    let mut queue = busy.shallow_clone();
    for _ in 0..8 {
        queue = queue.matmul(&busy);
    }
    // Written only once the queue has run; zero (or NaN) until then.
    let scores = (&queue * 0.0).nan_to_num(0.0, 0.0, 0.0) + &target;
    let leaf = scores.detach().set_requires_grad(true);
    let side = on_side.forward(&leaf, &labels, None, None).unwrap();
    side.total().backward();
    let (side_total, side_grad) = (side.total(), leaf.grad());
    use_default_stream(0).unwrap();
    tch::Cuda::synchronize(0);

    let leaf = target.detach().set_requires_grad(true);
    let expected = on_default.forward(&leaf, &labels, None, None).unwrap();
    expected.total().backward();
    assert_eq!(to_vec(&side_total), to_vec(&expected.total()));
    assert_eq!(rel_err(&side_grad, &leaf.grad()), 0.0);
}

/// A whole training step (forward, total, backward) captured as a CUDA
/// graph and replayed on new inputs gives what an eager step gives, and
/// counts its batch at every replay. Every tensor of the captured step stays
/// alive and nothing is allocated between capture and replay (libtorch's
/// allocator does not know of the capture).
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn a_whole_step_replays_from_a_cuda_graph() {
    use seesaw_loss::testing::cuda::{use_default_stream, use_side_stream, Graph};
    let dev = cuda();
    let (c, n) = (80, 1024);
    let vs = nn::VarStore::new(dev);
    let mut graphed = SeesawLoss::new(vs.root() / "graphed", SeesawConfig::detection(c)).unwrap();
    let mut eager = SeesawLoss::new(vs.root() / "eager", SeesawConfig::detection(c)).unwrap();
    let scores = random_scores(n, c + 2, 30).to_kind(Kind::Float).to_device(dev);
    let labels = random_labels(n, c + 1, 31).to_device(dev);
    let leaf = scores.detach().set_requires_grad(true);
    use_side_stream(0).unwrap();
    // Warm up: kernels loaded, the allocator's blocks cached, .grad made.
    let out = graphed.forward(&leaf, &labels, None, None).unwrap();
    out.total().backward();
    tch::Cuda::synchronize(0);
    let mut kept = Vec::new();
    let graph = Graph::capture(0, || {
        let mut grad = leaf.grad();
        let _ = grad.zero_();
        let out = graphed.forward(&leaf, &labels, None, None)?;
        let total = out.total();
        total.f_backward()?;
        kept.push(total);
        kept.push(out.classes);
        kept.extend(out.objectness);
        Ok(())
    })
    .unwrap();
    for step in 0..2 {
        let new_scores = random_scores(n, c + 2, 40 + step).to_kind(Kind::Float).to_device(dev);
        let new_labels = random_labels(n, c + 1, 50 + step).to_device(dev);
        tch::no_grad(|| {
            leaf.shallow_clone().copy_(&new_scores);
            labels.shallow_clone().copy_(&new_labels);
        });
        let before = to_i64(&graphed.cum_samples().unwrap());
        graph.replay().unwrap();
        tch::Cuda::synchronize(0);
        let after = to_i64(&graphed.cum_samples().unwrap());
        let batch = to_i64(&new_labels.bincount::<Tensor>(None, c + 1));
        let counted: Vec<i64> = before.iter().zip(&batch).map(|(b, d)| b + d).collect();
        assert_eq!(after, counted, "replay {step} counts its batch");
        // The eager loss, brought to the same counts, on the same inputs.
        set_counts_of(&vs, "eager.cum_samples", &before);
        let eager_leaf = new_scores.detach().set_requires_grad(true);
        let expected = eager.forward(&eager_leaf, &new_labels, None, None).unwrap();
        expected.total().backward();
        assert!(rel_err(&kept[0], &expected.total()) < 1e-6, "replay {step} loss");
        assert!(
            rel_err(&leaf.grad(), &eager_leaf.grad()) < 1e-6,
            "replay {step} gradient"
        );
    }
    use_default_stream(0).unwrap();
}

#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn the_kernels_agree_with_the_reference_at_the_edges_of_f32_on_the_gpu() {
    the_paths_agree_at_the_edges_of_f32_on(cuda());
}

/// Counts summed over NCCL ranks (feature `nccl`): with one rank the counts
/// and losses are those of a loss without a hook; with two GPUs, two ranks
/// (threads) over disjoint shards end with the counts of one loss fed both
/// shards.
#[cfg(feature = "nccl")]
#[test]
#[ignore = "needs a CUDA device (scripts/gpu-pack.sh's run.sh passes --include-ignored)"]
fn nccl_ranks_count_globally() {
    use seesaw_loss::{NcclCountSync, NcclUniqueId, Reduction};
    let _ = cuda();
    const CLASSES: i64 = 50;
    let classes = CLASSES;
    let batch = move |step: i64, rows: i64, dev: Device| {
        tch::manual_seed(step);
        (
            Tensor::randn([rows, CLASSES + 2], (Kind::Float, Device::Cpu)).to_device(dev),
            Tensor::randint(CLASSES + 1, [rows], (Kind::Int64, Device::Cpu)).to_device(dev),
        )
    };
    // One rank against no hook.
    let dev = Device::Cuda(0);
    let vs = nn::VarStore::new(dev);
    let mut plain = SeesawLoss::new(vs.root() / "plain", SeesawConfig::detection(classes)).unwrap();
    let mut synced = SeesawLoss::new(vs.root() / "synced", SeesawConfig::detection(classes)).unwrap();
    let id = NcclUniqueId::new().unwrap();
    synced.set_count_sync(Some(Box::new(NcclCountSync::new(0, 1, &id, 0).unwrap())));
    for step in 0..3 {
        let (x, y) = batch(step, 256, dev);
        let a = plain
            .forward_with_reduction(&x, &y, None, None, Reduction::None)
            .unwrap();
        let b = synced
            .forward_with_reduction(&x, &y, None, None, Reduction::None)
            .unwrap();
        assert_eq!(
            Vec::<f32>::try_from(&a.classes).unwrap(),
            Vec::<f32>::try_from(&b.classes).unwrap()
        );
    }
    assert_eq!(
        Vec::<i64>::try_from(plain.cum_samples().unwrap()).unwrap(),
        Vec::<i64>::try_from(synced.cum_samples().unwrap()).unwrap()
    );
    if tch::Cuda::device_count() < 2 {
        println!("one GPU: the two-rank case needs two");
        return;
    }
    // Two ranks, one per GPU, against one loss fed both shards.
    let id = NcclUniqueId::new().unwrap();
    let ranks: Vec<_> = (0..2usize)
        .map(|rank| {
            std::thread::spawn(move || {
                let dev = Device::Cuda(rank);
                let vs = nn::VarStore::new(dev);
                let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(classes)).unwrap();
                loss.set_count_sync(Some(Box::new(NcclCountSync::new(rank, 2, &id, rank).unwrap())));
                for step in 0..3 {
                    let (x, y) = batch(step, 512, dev);
                    let shard = |t: &Tensor| t.narrow(0, 256 * rank as i64, 256);
                    let _ = loss.forward(&shard(&x), &shard(&y), None, None).unwrap();
                }
                Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap()
            })
        })
        .collect();
    let mut whole = SeesawLoss::new(vs.root() / "whole", SeesawConfig::detection(classes)).unwrap();
    for step in 0..3 {
        let (x, y) = batch(step, 512, dev);
        let _ = whole.forward(&x, &y, None, None).unwrap();
    }
    let expected = Vec::<i64>::try_from(whole.cum_samples().unwrap()).unwrap();
    for rank in ranks {
        assert_eq!(rank.join().unwrap(), expected);
    }
}
