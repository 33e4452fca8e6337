"""Benchmark: the B x B score matrix + InfoNCE, forward and backward, for each score backend
(the naive einsum, the blocked torch computation, the fused Triton kernels).

    .venv/bin/python bench/similarity.py                                  # float32 on the CPU
    .venv/bin/python bench/similarity.py --device cuda --dtype bfloat16   # on a GPU, under autocast

Each measurement runs in a fresh process so peak memory is its own: on the CPU the rise of the
process's resident-set high-water mark (reset just before the timed steps) over its size then, on
CUDA ``max_memory_allocated`` over the allocation then. Time is the best of ``--repeats``
forward+backward steps after one warm-up step at the same shape (kernels compiled and autotuned,
allocators warm; the least disturbed by other load on the machine). All backends run in the same
invocation with the same inputs and are compared by ratio to the naive einsum of that run; a value
check (scores and gradients of each against a float64 reference) is printed first. The fused
backend needs CUDA (or ``TRITON_INTERPRET=1``, Triton's slow interpreter: small batches only);
elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from model.loss import info_nce
from model.similarity import batch_scores, resolve_backend

BACKENDS = ("naive", "blocked", "fused")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def make_inputs(args, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    side = int(round(args.hw**0.5))
    if side * side != args.hw:
        raise SystemExit(f"--hw must be a square number, got {args.hw}")
    a = torch.randn(batch, args.channels, args.heads, 1, args.frames, generator=gen)
    v = torch.randn(batch, args.channels, args.heads, side, side, generator=gen)
    lengths = torch.randint(args.frames // 2, args.frames + 1, (batch,), generator=gen)
    mask = torch.arange(args.frames).unsqueeze(0) < lengths.unsqueeze(1)
    # Features arrive in the run's dtype: under autocast the aligners' convolutions emit bf16/fp16.
    dtype = DTYPES[args.dtype]
    a = a.to(args.device, dtype).requires_grad_()
    v = v.to(args.device, dtype).requires_grad_()
    return a, mask.to(args.device), v


def autocast(args):
    low = args.dtype in ("bfloat16", "float16")
    return torch.autocast(args.device.split(":")[0], dtype=DTYPES[args.dtype], enabled=low)


def step(backend: str, a, mask, v, args) -> None:
    with autocast(args):
        scores = batch_scores(a, mask, v, chunk=args.chunk, backend=backend)
        loss = info_nce(scores, torch.tensor(10.0, device=a.device))
    loss.backward()


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the resident-set high-water mark to the current size (Linux) and return that size.

    The mark is otherwise inherited from the parent at fork and kept across exec, so a busy
    parent would show up as this process's peak.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(args) -> None:
    torch.manual_seed(0)
    a, mask, v = make_inputs(args, args.batch)
    cuda = args.device.startswith("cuda")
    # One step before the baseline: the kernels are compiled and autotuned for this shape (the
    # autotuner's timing buffers are freed again), code pages and one-off buffers are resident.
    step(args.worker, a, mask, v, args)
    a.grad = v.grad = None
    sync(args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        sync(args.device)
        start = time.perf_counter()
        step(args.worker, a, mask, v, args)
        a.grad = v.grad = None
        sync(args.device)
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_bytes("VmHWM") - base
    print(json.dumps({"time_s": min(times), "peak_bytes": max(peak, 0)}))


def measure(args, impl: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--batch", str(batch)]
    for name in ("device", "dtype", "channels", "heads", "frames", "hw", "repeats"):
        cmd += [f"--{name}", str(getattr(args, name))]
    if args.chunk:
        cmd += ["--chunk", str(args.chunk)]
    # A fixed mmap threshold makes glibc hand large buffers back to the system when freed, so the
    # resident-set peak reflects what was live rather than allocator caching.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def value_check(args, backends) -> str:
    """Norm-wise relative error of both implementations against a float64 einsum reference.

    Element-wise comparisons between two low-precision runs mislead: bf16 rounding creates ties in
    the max, and either winner is right.
    """
    batch = min(args.batch_sizes)
    a, mask, v = make_inputs(args, batch, seed=1)
    g = torch.randn(batch, batch, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(args.device)

    def run(fn, a, v, low_precision):
        with autocast(args) if low_precision else torch.autocast(args.device.split(":")[0], enabled=False):
            s = fn(a, mask, v)
        (s.double() * g).sum().backward()
        out = (s.detach().double(), a.grad.double(), v.grad.double())
        a.grad = v.grad = None
        return out

    ref = run(
        lambda *x: batch_scores(*x, backend="naive"),
        a.detach().double().requires_grad_(),
        v.detach().double().requires_grad_(),
        False,
    )
    parts = []
    for name in backends:
        got = run(lambda *x, name=name: batch_scores(*x, chunk=args.chunk, backend=name), a, v, True)
        errs = [((x - y).norm() / y.norm()).item() for x, y in zip(got, ref)]
        parts.append(f"{name}: scores {errs[0]:.1e}, grad a {errs[1]:.1e}, grad v {errs[2]:.1e}")
    return f"value check at B={batch}, relative error against float64: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--channels", type=int, default=192, help="C per head")
    parser.add_argument("--heads", type=int, default=2, help="K")
    parser.add_argument("--frames", type=int, default=56, help="T")
    parser.add_argument("--hw", type=int, default=196, help="h*w image cells (a square)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=None, help="block size in volume elements (default: library's)")
    parser.add_argument("--max-naive-gb", type=float, default=8.0, help="skip naive runs whose volume would need more")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"B x B score matrix (S_M) + InfoNCE, forward+backward; K={args.heads} C={args.channels} "
        f"T={args.frames} h*w={args.hw}; {args.dtype} on {args.device} ({device_name}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    skipped = unavailable(args)
    backends = [name for name in BACKENDS if name not in skipped]
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    print(value_check(args, backends))
    header = f"{'B':>5} " + " ".join(f"{name + ' ms':>10} {name + ' MB':>10}" for name in backends)
    header += "".join(f" {name + '/naive t':>14} {name + '/naive mem':>16}" for name in backends[1:])
    print(header)
    print("-" * len(header))
    itemsize = torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
    for batch in args.batch_sizes:
        volume_gb = batch * batch * args.heads * args.frames * args.hw * itemsize / 1e9
        results = {}
        for name in backends:
            if name == "naive" and 3 * volume_gb > args.max_naive_gb:
                results[name] = {"error": f"skipped (~{3 * volume_gb:.1f} GB > --max-naive-gb)"}
            else:
                results[name] = measure(args, name, batch)
            if "error" in results[name]:
                print(f"{batch:>5} {name}: {results[name]['error']}")
        print(
            f"{batch:>5} "
            + " ".join(_cells(results[name]) for name in backends)
            + "".join(_ratios(results[name], results["naive"]) for name in backends[1:])
        )
    print("ratios are backend / naive of the same run: below 1 is better")


def unavailable(args) -> dict[str, str]:
    """Backends that cannot run on this device and dtype, with the reason."""
    try:
        resolve_backend("fused", torch.device(args.device), DTYPES[args.dtype])
    except ValueError as err:
        return {"fused": str(err)}
    return {}


def _cells(res: dict) -> str:
    if "error" in res:
        return f"{'-':>10} {'-':>10}"
    return f"{res['time_s'] * 1e3:>10.2f} {res['peak_bytes'] / 2**20:>10.1f}"


def _ratios(res: dict, naive: dict) -> str:
    if "error" in res or "error" in naive:
        return f" {'-':>14} {'-':>16}"
    mem = res["peak_bytes"] / max(naive["peak_bytes"], 1)
    return f" {res['time_s'] / naive['time_s']:>14.2f} {mem:>16.3f}"


if __name__ == "__main__":
    main()
