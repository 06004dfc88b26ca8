//! Data-parallel ranks in one process: threads, each with its own loss and a
//! `CountSync` that sums the histograms through shared memory, held to one
//! loss fed the whole batches (`tests/count_sync*.rs`).

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use seesaw_loss::{Backend, Checks, CountSync, Reduction, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

/// The sum every rank adds its histogram to, and the barrier they meet at.
struct Meeting {
    sum: Mutex<Vec<i64>>,
    barrier: Barrier,
}

/// A rank's hook: an all-reduce through `Meeting`.
pub struct ThreadSum {
    meeting: Arc<Meeting>,
}

impl CountSync for ThreadSum {
    fn sum_over_ranks(&mut self, histogram: &mut Tensor) -> seesaw_loss::Result<()> {
        let mine = Vec::<i64>::try_from(&*histogram)?;
        {
            let mut sum = self.meeting.sum.lock().unwrap();
            if sum.is_empty() {
                *sum = vec![0; mine.len()];
            }
            for (total, value) in sum.iter_mut().zip(&mine) {
                *total += value;
            }
        }
        self.meeting.barrier.wait(); // every rank has added
        let total = self.meeting.sum.lock().unwrap().clone();
        if self.meeting.barrier.wait().is_leader() {
            // every rank has read
            self.meeting.sum.lock().unwrap().clear();
        }
        self.meeting.barrier.wait(); // cleared before the next step adds
        histogram.f_copy_(&Tensor::from_slice(&total))?;
        Ok(())
    }
}

/// `world` hooks over one meeting.
pub fn thread_sums(world: usize) -> Vec<ThreadSum> {
    let meeting = Arc::new(Meeting {
        sum: Mutex::new(Vec::new()),
        barrier: Barrier::new(world),
    });
    (0..world)
        .map(|_| ThreadSum {
            meeting: meeting.clone(),
        })
        .collect()
}

pub const CLASSES: i64 = 30;
pub const WORLD: usize = 3;
pub const SHARD: i64 = 24;
pub const STEPS: i64 = 4;

/// One step's whole batch: logits [WORLD * SHARD, CLASSES] and long-tailed
/// labels (class j about as often as 1 / (j + 1)), from a generator of the
/// test's own (libtorch's is global, and other tests draw from it too).
pub fn batch(step: i64) -> (Vec<f32>, Vec<i64>) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(step as u64 + 1);
    let mut next = move || {
        // splitmix64, to a uniform in [0, 1)
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let rows = WORLD as i64 * SHARD;
    let logits = (0..rows * CLASSES).map(|_| (4.0 * next() - 2.0) as f32).collect();
    let harmonic: f64 = (1..=CLASSES).map(|j| 1.0 / j as f64).sum();
    let labels = (0..rows)
        .map(|_| {
            let mut u = next() * harmonic;
            (0..CLASSES)
                .find(|&j| {
                    u -= 1.0 / (j + 1) as f64;
                    u < 0.0
                })
                .unwrap_or(CLASSES - 1)
        })
        .collect();
    (logits, labels)
}

/// Rows [first, first + rows) of a batch as tensors.
pub fn rows_of(batch: &(Vec<f32>, Vec<i64>), first: i64, rows: i64) -> (Tensor, Tensor) {
    let (logits, labels) = batch;
    let (a, b) = (first as usize, (first + rows) as usize);
    (
        Tensor::from_slice(&logits[a * CLASSES as usize..b * CLASSES as usize]).view([rows, CLASSES]),
        Tensor::from_slice(&labels[a..b]),
    )
}

pub fn config(backend: Backend, checks: Checks) -> SeesawConfig {
    SeesawConfig::classification(CLASSES).backend(backend).checks(checks)
}

/// What one rank ended with: its per-row losses per step (None for a failed
/// call), its counts, and the time its steps took.
pub struct RankRun {
    pub rows: Vec<Option<Vec<f32>>>,
    pub counts: Vec<i64>,
    pub elapsed: Duration,
}

/// Runs the ranks as threads over STEPS steps; `bad` = (step, rank) gives
/// that rank's shard a label out of range at that step.
pub fn run_ranks(backend: Backend, checks: Checks, bad: Option<(i64, usize)>) -> Vec<RankRun> {
    let batches: Vec<_> = (0..STEPS).map(batch).collect();
    let batches = Arc::new(batches);
    let handles: Vec<_> = thread_sums(WORLD)
        .into_iter()
        .enumerate()
        .map(|(rank, sync)| {
            let batches = batches.clone();
            std::thread::spawn(move || {
                let vs = nn::VarStore::new(Device::Cpu);
                let mut loss = SeesawLoss::new(vs.root(), config(backend, checks)).unwrap();
                loss.set_count_sync(Some(Box::new(sync)));
                let mut rows = Vec::new();
                let start = Instant::now();
                for (step, batch) in batches.iter().enumerate() {
                    let (scores, mut labels) = rows_of(batch, rank as i64 * SHARD, SHARD);
                    if bad == Some((step as i64, rank)) {
                        labels = labels.copy();
                        let _ = labels.get(3).fill_(CLASSES + 5);
                    }
                    let out = loss.forward_with_reduction(&scores, &labels, None, None, Reduction::None);
                    rows.push(out.ok().map(|o| Vec::<f32>::try_from(&o.classes).unwrap()));
                }
                let elapsed = start.elapsed();
                RankRun {
                    rows,
                    counts: Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap(),
                    elapsed,
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// One loss fed the whole batches, without the shards `absent` lists as
/// (step, rank): its per-row losses per step (over the rows it was fed) and
/// its counts, and the time its steps took.
pub fn run_single(backend: Backend, absent: &[(i64, usize)]) -> (Vec<Vec<f32>>, Vec<i64>, Duration) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), config(backend, Checks::Immediate)).unwrap();
    let mut steps = Vec::new();
    let start = Instant::now();
    for step in 0..STEPS {
        let batch = batch(step);
        let ranks: Vec<usize> = (0..WORLD).filter(|&r| !absent.contains(&(step, r))).collect();
        let shards: Vec<(Tensor, Tensor)> = ranks
            .iter()
            .map(|&r| rows_of(&batch, r as i64 * SHARD, SHARD))
            .collect();
        let scores = Tensor::cat(&shards.iter().map(|s| &s.0).collect::<Vec<_>>(), 0);
        let labels = Tensor::cat(&shards.iter().map(|s| &s.1).collect::<Vec<_>>(), 0);
        let out = loss
            .forward_with_reduction(&scores, &labels, None, None, Reduction::None)
            .unwrap();
        steps.push(Vec::<f32>::try_from(&out.classes).unwrap());
    }
    let elapsed = start.elapsed();
    (
        steps,
        Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap(),
        elapsed,
    )
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{what}: row {i}: {x} against {y}"
        );
    }
}

/// Every rank's counts equal (exactly) those of one loss fed the whole
/// batches, and each rank's per-row losses that loss's rows for its shard.
pub fn ranks_match_one_loss_fed_the_whole_batches(backend: Backend) {
    let ranks = run_ranks(backend, Checks::Immediate, None);
    let (single, counts, single_time) = run_single(backend, &[]);
    for (rank, run) in ranks.iter().enumerate() {
        assert_eq!(run.counts, counts, "rank {rank}'s counts");
        for (step, rows) in run.rows.iter().enumerate() {
            let rows = rows
                .as_ref()
                .unwrap_or_else(|| panic!("rank {rank} step {step} failed"));
            let first = rank * SHARD as usize;
            let expected = &single[step][first..first + SHARD as usize];
            assert_close(rows, expected, &format!("{backend:?} rank {rank} step {step}"));
        }
    }
    let per_step = |d: Duration| d.as_secs_f64() * 1e6 / STEPS as f64;
    println!(
        "{backend:?}: {WORLD} ranks x {SHARD} rows, {CLASSES} classes: {:.0} us per rank step with the hook \
         (slowest rank), one loss over {} rows {:.0} us per step",
        ranks.iter().map(|r| per_step(r.elapsed)).fold(0.0, f64::max),
        WORLD as i64 * SHARD,
        per_step(single_time)
    );
}

/// A bad shard on one rank under immediate checks: that rank's call fails,
/// no rank waits forever, and every rank's counts are as if that shard were
/// absent.
pub fn a_bad_shard_counts_as_absent(backend: Backend) {
    let bad = (1, 1usize);
    let ranks = run_ranks(backend, Checks::Immediate, Some(bad));
    let (_, counts, _) = run_single(backend, &[bad]);
    for (rank, run) in ranks.iter().enumerate() {
        assert_eq!(run.counts, counts, "{backend:?}: rank {rank}'s counts");
        for (step, rows) in run.rows.iter().enumerate() {
            let failed = (step as i64, rank) == bad;
            assert_eq!(rows.is_none(), failed, "{backend:?}: rank {rank} step {step}");
        }
    }
}

/// The same under deferred checks: the bad call returns (NaN losses) and
/// counts nothing of its own; the error comes from that rank's next call,
/// which then fails too and joins with nothing. Every rank's counts are as
/// if both of that rank's shards were absent.
pub fn a_deferred_bad_shard_counts_as_absent(backend: Backend) {
    let bad = (1, 1usize);
    let ranks = run_ranks(backend, Checks::Deferred, Some(bad));
    let (_, counts, _) = run_single(backend, &[bad, (bad.0 + 1, bad.1)]);
    for (rank, run) in ranks.iter().enumerate() {
        assert_eq!(run.counts, counts, "{backend:?}: rank {rank}'s counts");
        for (step, rows) in run.rows.iter().enumerate() {
            let failed = (step as i64, rank) == (bad.0 + 1, bad.1);
            assert_eq!(rows.is_none(), failed, "{backend:?}: rank {rank} step {step}");
        }
    }
}

/// A hook that costs nothing, to time the hook's own overhead against no
/// hook on one loss.
pub struct Alone;

impl CountSync for Alone {
    fn sum_over_ranks(&mut self, _histogram: &mut Tensor) -> seesaw_loss::Result<()> {
        Ok(())
    }
}

/// Microseconds per step of one loss over `rows` rows, with and without a
/// hook that does nothing (what the hook path itself costs).
pub fn hook_overhead(backend: Backend, rows: i64, steps: usize) -> (f64, f64) {
    let time = |hook: bool| {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut loss = SeesawLoss::new(vs.root(), config(backend, Checks::Immediate)).unwrap();
        if hook {
            loss.set_count_sync(Some(Box::new(Alone)));
        }
        let scores = Tensor::randn([rows, CLASSES], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(CLASSES, [rows], (Kind::Int64, Device::Cpu));
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..steps {
                let _ = loss.forward(&scores, &labels, None, None).unwrap();
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e6 / steps as f64);
        }
        best
    };
    (time(false), time(true))
}
