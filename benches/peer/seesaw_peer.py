"""The Seesaw loss as the Python references compute it, timed in PyTorch eager
and under torch.compile: the peer the crate's benchmarks are compared with.

The implementation follows mmdetection's SeesawLoss step by step (written
here from its published formulas): a per-label loop that reads every distinct
label back to the host to update the counts, the C x C count-ratio matrix,
one tensor operation per factor, then cross-entropy with autograd.

    python benches/peer/seesaw_peer.py --device cpu --shapes lvis-det:4096
    python benches/peer/seesaw_peer.py --device cuda            # every shape, f32 and bf16

Prints one JSON object per measurement (median milliseconds of a training
step: forward + backward) and a table at the end.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "lvis-det": (True, 1203, [512, 4096, 8192, 65536]),
    "imagenet-lt": (False, 1000, [256, 4096]),
    "large-vocab": (False, 32000, [4096]),
}


def seesaw_ce_loss(cls_score, labels, cum_samples, num_classes, p, q, eps):
    """Per-row Seesaw cross-entropy, one operation per factor."""
    onehot = F.one_hot(labels, num_classes)
    seesaw_weights = cls_score.new_ones(onehot.size())
    if p > 0:
        ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        below = (ratio < 1.0).float()
        sample_weights = ratio.pow(p) * below + (1 - below)
        seesaw_weights = seesaw_weights * sample_weights[labels, :]
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        self_scores = scores[torch.arange(len(scores), device=scores.device), labels]
        score_matrix = scores / self_scores[:, None].clamp(min=eps)
        above = (score_matrix > 1.0).float()
        seesaw_weights = seesaw_weights * (score_matrix.pow(q) * above + (1 - above))
    cls_score = cls_score + seesaw_weights.log() * (1 - onehot)
    return F.cross_entropy(cls_score, labels, reduction="none")


class SeesawLoss:
    """mmdetection's detection head (C + 2 outputs) or mmpretrain's classifier."""

    def __init__(self, num_classes, detection, device, p=0.8, q=2.0, eps=1e-2):
        self.num_classes, self.detection = num_classes, detection
        self.p, self.q, self.eps = p, q, eps
        counters = num_classes + 1 if detection else num_classes
        self.cum_samples = torch.zeros(counters, dtype=torch.float, device=device)

    def count(self, labels):
        # The references' count loop: one host read per distinct label.
        for u in labels.unique():
            self.cum_samples[u] += (labels == u.item()).sum()

    def loss(self, cls_score, labels):
        c = self.num_classes
        if not self.detection:
            rows = seesaw_ce_loss(cls_score.float(), labels, self.cum_samples, c, self.p, self.q, self.eps)
            return rows.mean()
        pos = labels < c
        obj_labels = (labels == c).long()
        classes, objectness = cls_score[:, :c].float(), cls_score[:, c:].float()
        if pos.sum() > 0:
            rows = seesaw_ce_loss(classes[pos], labels[pos], self.cum_samples[:c], c, self.p, self.q, self.eps)
            loss_classes = rows.mean()
        else:
            loss_classes = classes[pos].sum()
        loss_objectness = F.cross_entropy(objectness, obj_labels)
        return loss_classes + loss_objectness

    def __call__(self, cls_score, labels):
        self.count(labels)
        return self.loss(cls_score, labels)


def timed(device, fn, runs, warmup):
    """Median milliseconds of fn(i) over `runs` calls after `warmup` calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(name, detection, classes, rows, dtype, device, mode, runs, rotate):
    width = classes + 2 if detection else classes
    torch.manual_seed(0)
    # Several inputs, used in turn, so that caches do not flatter the numbers.
    inputs = [
        ((torch.randn(rows, width, device=device) * 2).to(dtype),
         torch.randint(classes + 1 if detection else classes, (rows,), device=device))
        for _ in range(rotate)
    ]
    loss = SeesawLoss(classes, detection, device)
    if mode == "compile":
        # A fresh cache per measurement; the number of positive rows differs
        # between inputs, so shapes are left to torch.compile's automatic
        # dynamic handling (it recompiles once with a symbolic size).
        torch._dynamo.reset()
        compute = torch.compile(loss.loss)
    else:
        compute = loss.loss

    def step(i):
        x, y = inputs[i % rotate]
        x = x.detach().requires_grad_(True)
        loss.count(y)  # eager in both modes: the host reads cannot compile away
        compute(x, y).backward()

    # Warm-up visits every input twice, so compilation stays out of the timing.
    ms = timed(device, step, runs, warmup=2 * rotate)
    return {
        "shape": name, "N": rows, "C": classes, "dtype": str(dtype).replace("torch.", ""),
        "device": device, "mode": mode, "step_ms": round(ms, 4),
        "logit_bytes": rows * width * 4,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="*", help="name:N, e.g. lvis-det:8192 (default: all)")
    ap.add_argument("--dtypes", nargs="*", default=None, help="float32 bfloat16 (default: f32, + bf16 on cuda)")
    ap.add_argument("--modes", nargs="*", default=["eager", "compile"])
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    dtypes = args.dtypes or (["float32", "bfloat16"] if args.device == "cuda" else ["float32"])
    runs = args.runs or (50 if args.device == "cuda" else 10)
    wanted = []
    for name, (det, c, ns) in SHAPES.items():
        for n in ns:
            if not args.shapes or f"{name}:{n}" in args.shapes:
                wanted.append((name, det, c, n))
    print(f"# torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {torch.get_num_threads()} threads"))
    results = []
    for name, det, c, n in wanted:
        for dt in dtypes:
            for mode in args.modes:
                r = measure(name, det, c, n, getattr(torch, dt), args.device, mode, runs, rotate=4)
                print(json.dumps(r), flush=True)
                results.append(r)
    print(f"\n{'shape':<14}{'N':>7}{'dtype':>10}{'mode':>9}{'step ms':>11}")
    for r in results:
        print(f"{r['shape']:<14}{r['N']:>7}{r['dtype']:>10}{r['mode']:>9}{r['step_ms']:>11.3f}")


if __name__ == "__main__":
    main()
