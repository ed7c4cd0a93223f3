"""Benchmark: the cross-attention with the new-AQR bias, at sizes up to nuScenes.

Several ways of computing one cross-attention layer (projections included), forward
and forward + backward, time and peak memory:

- prototype: nn.MultiheadAttention with the dense bias expanded per head
  (a float attn_mask of [B*H, Q, N]), the way the research prototype did it;
- dense: the plugin's [B, 1, Q, N] bias broadcast over heads into SDPA, the
  bias built inside the timed step (as for a one-layer decoder);
- dense-shared: the same with the bias built once outside the step, as in the
  head, where one bias serves every decoder layer (its gradient still flows);
- flex: the plugin's flex_attention score_mod (bias computed on the fly);
- window: the plugin's exact window-sparse path (fused no-bias attention corrected
  on each query's window keys; CPU), each query's window (keys, order, bias values)
  built inside the timed step;
- window-shared: the same with the window built once outside the step, as the head
  does for all its decoder layers (the bias values' gradient still flows);
- floor: SDPA without any bias (what every ratio is relative to).

Each (method, size, pass) runs in a fresh subprocess, so peak memory is that
case's own, and a case that does not fit fails alone ("out of memory") without
taking the others down. Run from the repository root:

    python bench/attention.py                     # CPU, writes bench/results/attention-cpu.*
    python bench/attention.py --device cuda       # GPU, all sizes
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aqr_exp.files import write_bench_results
from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells
from cmt_aqr.aqr.window_attention import WindowKeys, window_attention
from cmt_aqr.attention import MultiheadAttention

log = logging.getLogger("bench.attention")

METHODS = ("floor", "dense", "dense-shared", "flex", "window", "window-shared", "prototype")
PASSES = ("forward", "forward+backward")
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Size:
    """One problem size: batch, queries, and the memory layout (BEV + 6 cameras)."""

    name: str
    batch: int
    queries: int
    bev: tuple[int, int]
    cam: tuple[int, int]  # per view, stride 16 of the image
    views: int = 6
    heads: int = 8
    dims: int = 256

    @property
    def layout(self) -> MemoryLayout:
        return MemoryLayout(self.bev, self.views, self.cam)

    @property
    def tokens(self) -> int:
        return self.layout.num_tokens


# BEV 128^2 + 6 x 20x50 = 22,384 tokens (R50 800x320); 180^2 + 6 x 40x100 = 56,400 (VoV 1600x640).
SIZES = {
    "demo": Size("demo: Q=200, N=4,864", 2, 200, (64, 64), (8, 16), heads=4, dims=128),
    "r50-q900": Size("800x320: Q=900, N=22,384", 2, 900, (128, 128), (20, 50)),
    "r50-q1800": Size("800x320 + DN: Q=1,800, N=22,384", 2, 1800, (128, 128), (20, 50)),
    "vov-q900": Size("1600x640: Q=900, N=56,400", 2, 900, (180, 180), (40, 100)),
    "vov-q1800": Size("1600x640 + DN: Q=1,800, N=56,400", 2, 1800, (180, 180), (40, 100)),
}


def random_cells(size: Size, generator: torch.Generator, device: torch.device) -> QueryCells:
    """Queries spread over the BEV map; 80 % of them seen by one of the cameras."""
    shape = (size.batch, size.queries)

    def uniform(high: int) -> Tensor:
        return torch.randint(0, high, shape, generator=generator).to(device)

    bev_row, bev_col = uniform(size.bev[0]), uniform(size.bev[1])
    cam_row, cam_col = uniform(size.cam[0]), uniform(size.cam[1])
    valid = (torch.rand(shape, generator=generator) < 0.8).to(device)
    return QueryCells(
        bev_row=bev_row,
        bev_col=bev_col,
        cam_view=uniform(size.views),
        cam_row=cam_row,
        cam_col=cam_col,
        cam_valid=valid,
        bev_pos=torch.stack((bev_row, bev_col), -1).float() + 0.5,
        cam_pos=torch.stack((cam_row, cam_col), -1).float() + 0.5,
    )


class Case:
    """The inputs and the layer of one measurement; `step()` is what is timed."""

    def __init__(
        self,
        method: str,
        size: Size,
        backward: bool,
        device: torch.device,
        window: tuple[int, int] = (8, 8),
    ) -> None:
        gen = torch.Generator().manual_seed(0)
        self.method, self.size, self.backward = method, size, backward
        grad = backward

        def rand(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)

        self.query = rand(size.batch, size.queries, size.dims)
        self.memory = rand(size.batch, size.tokens, size.dims)
        self.cells = random_cells(size, gen, device)
        self.lidar_w = torch.rand(size.batch, size.queries, generator=gen).to(device)
        self.cam_w = torch.rand(size.batch, size.queries, generator=gen).to(device)
        self.lidar_w.requires_grad_(grad)
        self.cam_w.requires_grad_(grad)
        self.scale = BiasScale(2.5, learnable=True).to(device)
        self.spec = WindowSpec(bev_window=window[0], cam_window=window[1])
        if method == "prototype":
            self.layer = nn.MultiheadAttention(size.dims, size.heads, batch_first=True)
        else:
            self.layer = MultiheadAttention(size.dims, size.heads)
        self.layer.to(device)
        self.shared = None
        if method == "dense-shared":
            shared = self._bias("dense").dense().detach()
            self.shared = _Fixed(shared.requires_grad_(grad))
        if method == "window-shared":
            keys, values = self._bias("window").window()
            self.shared = _FixedWindow(keys, values.detach().requires_grad_(grad))

    def _bias(self, impl: str) -> WindowBias:
        return WindowBias(
            self.cells,
            self.lidar_w,
            self.cam_w,
            self.scale(),
            self.size.layout,
            self.spec,
            impl,
        )

    def forward(self) -> Tensor:
        if self.method == "floor":
            return self.layer(self.query, self.memory, self.memory)
        if self.shared is not None:
            return self.layer(self.query, self.memory, self.memory, bias=self.shared)
        if self.method in ("dense", "flex", "window"):
            return self.layer(self.query, self.memory, self.memory, bias=self._bias(self.method))
        per_head = self._bias("dense").dense().repeat_interleave(self.size.heads, dim=0)
        mask = per_head.reshape(-1, self.size.queries, self.size.tokens)
        out, _ = self.layer(
            self.query, self.memory, self.memory, attn_mask=mask, need_weights=False
        )
        return out

    def step(self) -> None:
        if not self.backward:
            with torch.no_grad():
                self.forward()
            return
        self.forward().float().square().mean().backward()


class _Fixed:
    """A precomputed [B, 1, Q, N] bias (the AttentionBias protocol)."""

    def __init__(self, bias: Tensor) -> None:
        self.bias = bias

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.to(q.dtype))


class _FixedWindow:
    """A precomputed batch window: keys and bias values (the AttentionBias protocol)."""

    def __init__(self, keys: WindowKeys, values: Tensor) -> None:
        self.keys, self.values = keys, values

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return window_attention(q, k, v, self.values.to(q.dtype), self.keys)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    method: str,
    size_key: str,
    backward: bool,
    device_name: str,
    budget_s: float,
    window: tuple[int, int] = (8, 8),
) -> dict:
    """Runs in the child: warm up once, then time repeats until the budget is spent."""
    device = torch.device(device_name)
    size = SIZES[size_key]
    case = Case(method, size, backward, device, window)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_mb()
    case.step()  # warm-up (and flex compilation on the GPU)
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 50):
        t0 = time.perf_counter()
        case.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak_mb = _rss_mb() - base
    return {"time_ms": statistics.median(times) * 1e3, "repeats": len(times), "peak_mb": peak_mb}


def run_isolated(
    method: str,
    size_key: str,
    backward: bool,
    device: str,
    budget_s: float,
    mem_limit_gb: float,
    window: tuple[int, int] = (8, 8),
) -> dict:
    """One case in a fresh process; a failure is recorded with its reason."""
    cmd = [
        sys.executable, __file__, "--child", method, size_key, str(int(backward)),
        "--device", device, "--budget-s", str(budget_s), "--mem-limit-gb", str(mem_limit_gb),
        "--windows", _window_text(window),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    text = tail[0]
    oom = "out of memory" in text.lower() or "can't allocate" in text.lower()
    oom = oom or proc.returncode in (-9, 137)
    return {"error": "out of memory" if oom else text[:200]}


def combine_rounds(values: list[dict]) -> dict:
    """One case measured in several interleaved rounds: the median of the rounds' medians
    (the machine's load drifts between processes more than within one), the largest
    peak memory; any failed round makes the case a failure."""
    for value in values:
        if "error" in value:
            return value
    return {
        "time_ms": statistics.median(v["time_ms"] for v in values),
        "repeats": sum(v["repeats"] for v in values),
        "rounds": len(values),
        "peak_mb": max(v["peak_mb"] for v in values),
    }


def _window_text(window: tuple[int, int]) -> str:
    return f"{window[0]}x{window[1]}"


def parse_windows(text: str) -> list[tuple[int, int]]:
    """'8x8,15x3' -> [(8, 8), (15, 3)]: BEV x camera window sizes in cells."""
    windows = []
    for item in text.split(","):
        bev, _, cam = item.partition("x")
        if not (bev.isdigit() and cam.isdigit()):
            raise ValueError(f"window {item!r}: expected BEVxCAMERA cells, e.g. 8x8 or 15x3")
        windows.append((int(bev), int(cam)))
    return windows


def _limit_memory(limit_gb: float) -> None:
    """CPU: cap the address space so a case too big for the machine fails alone."""
    if limit_gb > 0:
        limit = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {threads} threads), torch {torch.__version__}"


def _format(value: dict, floor: dict | None) -> tuple[str, str, str]:
    if "error" in value:
        return value["error"], "—", "—"
    ratio = "—"
    if floor and "time_ms" in floor:
        ratio = f"{value['time_ms'] / floor['time_ms']:.2f}×"
    return f"{value['time_ms']:.1f}", ratio, f"{value['peak_mb']:.0f}"


def markdown(results: list[dict], device: str, command: str) -> str:
    lines = [
        f"# Attention-bias benchmark ({device})",
        "",
        f"Command: `{command}`. One cross-attention layer with projections, B = 2, 8 heads,",
        "dim 256 (the demo size: 4 heads, dim 128), learnable bias scale; window: BEV x",
        "camera window in cells.",
        "`dense` builds the bias inside the step; `dense-shared` builds it once per batch",
        "(the head shares it across decoder layers); `window` and `window-shared` likewise",
        "for each query's window. `forward` runs without autograd.",
        "Time is the median over repeats (with several rounds, each method run in turn per",
        "round: the median of the rounds'); peak memory is the increase over the case's",
        "inputs (GPU: max allocated; CPU: peak resident set). Ratios are to the no-bias",
        "floor of the same size and pass, measured in the same run.",
        "",
        "| size | pass | method | window | time (ms) | × floor | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    floors = {(r["size"], r["pass"]): r for r in results if r["method"] == "floor"}
    for r in results:
        floor = floors.get((r["size"], r["pass"]))
        time_ms, ratio, mem = _format(r, floor)
        lines.append(
            f"| {r['size_name']} | {r['pass']} | {r['method']} | {r['window']} | {time_ms} | "
            f"{ratio} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=None, help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget-s", type=float, default=5.0, help="timing budget per case")
    parser.add_argument(
        "--mem-limit-gb", type=float, default=16.0, help="CPU address-space cap per case (0: none)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of every method per case"
    )
    parser.add_argument(
        "--windows", default="8x8", help="BEV x camera window sizes, comma-separated: 8x8,15x3"
    )
    parser.add_argument("--out", type=Path, default=None, help="results file stem")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SIZE", "BACKWARD"))
    args = parser.parse_args(argv)

    if args.child:
        if not args.device.startswith("cuda"):
            _limit_memory(args.mem_limit_gb)
        method, size_key, backward = args.child
        window = parse_windows(args.windows)[0]
        result = measure(method, size_key, backward == "1", args.device, args.budget_s, window)
        print(json.dumps(result))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    default_sizes = "demo,r50-q900,r50-q1800,vov-q900,vov-q1800"
    sizes = (args.sizes or default_sizes).split(",")
    for key in sizes:
        if key not in SIZES:
            parser.error(f"unknown size {key!r}; known: {', '.join(SIZES)}")
    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    try:
        windows = parse_windows(args.windows)
    except ValueError as err:
        parser.error(str(err))
    # The floor has no window: measured once per size and pass.
    cases = [(m, w) for w in windows for m in methods if m != "floor" or w == windows[0]]
    device = device_description(args.device)
    results = []
    for key in sizes:
        for backward in (False, True):
            rounds = [
                {
                    (method, window): run_isolated(
                        method, key, backward, args.device, args.budget_s, args.mem_limit_gb, window
                    )
                    for method, window in cases
                }
                for _ in range(args.rounds)
            ]
            for method, window in cases:
                row = {
                    "size": key,
                    "size_name": SIZES[key].name,
                    "pass": PASSES[backward],
                    "method": method,
                    "window": "—" if method == "floor" else _window_text(window),
                    **combine_rounds([values[method, window] for values in rounds]),
                }
                log.info("%s", row)
                results.append(row)
    command = "python bench/attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = args.out or RESULTS / f"attention-{args.device.split(':')[0]}"
    payload = {
        "device": device,
        "command": command.strip(),
        "sizes": {k: asdict(SIZES[k]) for k in sizes},
        "results": results,
    }
    write_bench_results(stem, payload, markdown(results, device, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
