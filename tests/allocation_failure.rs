//! When libtorch cannot allocate inside a call, the call returns an error
//! (never a panic) and the counts are as they were. Each case runs in a
//! child process (this test binary again) that allocates its inputs, then
//! lowers its own address-space limit to a little above what it uses, so
//! that the call's N x C allocation fails as running out of memory does.

use std::process::Command;

use seesaw_loss::{Backend, Error, SeesawConfig, SeesawLoss};
use tch::{nn, Device, Kind, Tensor};

const CHILD: &str = "SEESAW_ALLOCATION_FAILURE_CASE";
const CASES: [&str; 7] = [
    "reference-forward",
    "reference-forward-backward",
    "fused-forward-backward",
    "fused-backward",
    "emulated-forward-backward",
    "activation",
    "accuracy",
];

#[test]
fn allocation_failures_inside_calls_are_errors_that_leave_the_counts() {
    if let Ok(case) = std::env::var(CHILD) {
        child(&case);
        return;
    }
    for case in CASES {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "allocation_failures_inside_calls_are_errors_that_leave_the_counts",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, case)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{case}: the child failed:\n{text}");
        assert!(text.contains(&format!("case {case} ok")), "{case}:\n{text}");
    }
}

/// The address space in use now, in bytes (`VmSize`).
fn address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Sets the soft address-space limit (the hard one stays, so it can be
/// raised back).
fn limit_address_space(bytes: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit / setrlimit on this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
    }
}

fn unlimit_address_space() {
    limit_address_space(u64::MAX);
}

fn child(case: &str) {
    // 100,000 rows of 1002 f32 logits: 400 MB, and a call needs another N x C.
    let (c, n) = (1000, 100_000);
    let backend = if case.starts_with("reference") {
        Backend::Reference
    } else {
        Backend::Fused
    };
    #[cfg(feature = "testing")]
    if case.starts_with("emulated") {
        seesaw_loss::testing::emulate_kernels();
    }
    #[cfg(not(feature = "testing"))]
    if case.starts_with("emulated") {
        println!("case {case} ok: skipped without the testing feature");
        return;
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let mut loss = SeesawLoss::new(vs.root(), SeesawConfig::detection(c).backend(backend)).unwrap();
    let scores = Tensor::randn([n, c + 2], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(c + 1, [n], (Kind::Int64, Device::Cpu));
    // Warm up on a small batch: threads, allocator, everything but the size.
    let small = scores.narrow(0, 0, 64).copy();
    let small_labels = labels.narrow(0, 0, 64).copy();
    let out = loss
        .forward(&small.set_requires_grad(true), &small_labels, None, None)
        .unwrap();
    out.total().backward();
    let leaf = scores.detach().set_requires_grad(true);
    let before = Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap();

    // Room for small allocations, not for another N x C; the emulated kernels
    // also need their fiber stacks (128 MiB for seesaw_prepare's 1024 threads).
    let headroom: u64 = if case.starts_with("emulated") {
        320 << 20
    } else {
        64 << 20
    };
    limit_address_space(address_space() + headroom);
    let outcome: Result<(), Error> = match case {
        "reference-forward" => loss.forward(&leaf, &labels, None, None).map(|_| ()),
        "reference-forward-backward" | "fused-forward-backward" | "emulated-forward-backward" => {
            loss.forward_backward(&scores, &labels, None, None).map(|_| ())
        }
        "activation" => loss.activation(&scores).map(|_| ()),
        // The detection head's accuracy copies the positive rows' class logits.
        "accuracy" => loss.accuracy(&scores, &labels).map(|_| ()),
        "fused-backward" => {
            // The node's forward keeps nothing N x C and fits; its backward
            // cannot allocate the gradient, and says so through f_backward.
            let out = loss.forward(&leaf, &labels, None, None).unwrap();
            let total = out.f_total().unwrap();
            let backward = total.f_backward();
            unlimit_address_space();
            let err = backward.expect_err("backward allocates the N x C gradient");
            println!("case {case} ok: {err}");
            return;
        }
        other => panic!("no case {other}"),
    };
    unlimit_address_space();
    let err = outcome.expect_err("the call allocates N x C beyond the limit");
    assert!(matches!(err, Error::Torch(_) | Error::Internal(_)), "{err:?}");
    let after = Vec::<i64>::try_from(loss.cum_samples().unwrap()).unwrap();
    assert_eq!(before, after, "the failed call changed the counts");
    // And the loss still works.
    loss.forward(&small, &small_labels, None, None).unwrap();
    println!("case {case} ok: {err}");
}
