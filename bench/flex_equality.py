"""Do the attention-bias implementations agree on this device? Dense (the reference)
against flex and, on the CPU, window: the output and every gradient (queries, keys,
values, both weights, the bias scale and, for adaptive windows, each query's σ), for fixed
and adaptive windows at the demo's size. Flex trains on CUDA only, so on the CPU only its
forward pass is compared. Prints one line per case; exits 1 when a case differs by more
than the tolerance. Run from the repository root:

    python bench/flex_equality.py --device cuda
"""

from __future__ import annotations

import argparse
import sys

import torch

from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells

DEMO = MemoryLayout(bev_size=(64, 64), num_views=6, cam_size=(4, 8))
SPECS = {
    "uniform": WindowSpec(8, 3),
    "gaussian": WindowSpec(8, 3, profile="gaussian", sigma=2.0),
    "adaptive": WindowSpec(15, 3, profile="gaussian"),
}


def _inputs(device: torch.device, adaptive: bool, seed: int = 0) -> tuple[dict, QueryCells]:
    gen = torch.Generator().manual_seed(seed)
    batch, heads, queries, dims = 2, 4, 200, 32
    ints = lambda high: torch.randint(0, high, (batch, queries), generator=gen)  # noqa: E731
    cells = QueryCells(
        bev_row=ints(64), bev_col=ints(64), cam_view=ints(6), cam_row=ints(4), cam_col=ints(8),
        cam_valid=torch.rand(batch, queries, generator=gen) < 0.6,
        bev_pos=torch.zeros(batch, queries, 2), cam_pos=torch.zeros(batch, queries, 2),
    )  # fmt: skip
    cells = QueryCells(*(getattr(cells, name).to(device) for name in cells.__dataclass_fields__))
    shapes = {
        "q": (batch, heads, queries, dims),
        "k": (batch, heads, DEMO.num_tokens, dims),
        "v": (batch, heads, DEMO.num_tokens, dims),
        "lidar_w": (batch, queries),
        "cam_w": (batch, queries),
    }
    if adaptive:
        shapes |= {"bev_sigma": (batch, queries), "cam_sigma": (batch, queries)}
    tensors = {name: torch.randn(*shape, generator=gen) for name, shape in shapes.items()}
    for name in ("bev_sigma", "cam_sigma"):
        if name in tensors:
            tensors[name] = 0.5 + tensors[name].abs()
    return {name: t.to(device) for name, t in tensors.items()}, cells


def attend(impl: str, spec: WindowSpec, device: torch.device, train: bool) -> dict:
    """The output and, when training, the gradients, by name."""
    tensors, cells = _inputs(device, spec is SPECS["adaptive"])
    tensors = {name: t.requires_grad_(train) for name, t in tensors.items()}
    scale = BiasScale(2.5, learnable=True).to(device)
    sigmas = {name: tensors[name] for name in ("bev_sigma", "cam_sigma") if name in tensors}
    bias = WindowBias(
        cells, tensors["lidar_w"], tensors["cam_w"], scale() if train else scale().detach(),
        DEMO, spec, impl, **sigmas,
    )  # fmt: skip
    out = bias.attend(tensors["q"], tensors["k"], tensors["v"])
    if not train:
        return {"out": out.detach()}
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    names = [*tensors, "bias_scale"]
    grads = torch.autograd.grad((out * probe).sum(), [*tensors.values(), scale.logit])
    return {"out": out.detach(), **dict(zip(names, grads, strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |Δ| / max |dense|")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    others = ["flex"] + (["window"] if device.type == "cpu" else [])
    failed = 0
    for name, spec in SPECS.items():
        for impl in others:
            train = not (impl == "flex" and device.type == "cpu")
            reference, got = attend("dense", spec, device, train), attend(impl, spec, device, train)
            worst = max(
                float((got[key] - reference[key]).abs().max() / reference[key].abs().max())
                for key in reference
            )
            ok = worst <= args.tolerance
            failed += not ok
            what = "forward + every gradient" if train else "forward"
            print(
                f"{'ok  ' if ok else 'FAIL'} {name:9s} {impl:6s} {what:24s} max rel |Δ| {worst:.2e}"
            )
    print(f"device: {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
