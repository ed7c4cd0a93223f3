"""GridMask on the camera images during training, as CMT's detector applies it.

With probability `prob` per batch, one grid is drawn for the whole batch: squares of
side d - l (d drawn from [2, H), l = ratio · d) are zeroed on a regular lattice
(mode 1: the stripes between the squares are kept). Drawn on a 1.5x canvas and
center-cropped, so the lattice's phase varies.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def grid_keep_mask(
    height: int, width: int, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """[H, W] float: 1 where pixels are kept (the stripes), 0 inside the squares."""
    canvas_h, canvas_w = int(1.5 * height), int(1.5 * width)
    d = int(torch.randint(2, height, (1,), generator=generator))
    length = min(max(int(d * ratio + 0.5), 1), d - 1)
    start_h, start_w = (int(v) for v in torch.randint(d, (2,), generator=generator))

    def stripes(size: int, start: int) -> Tensor:
        offset = torch.arange(size) - start
        return (offset >= 0) & (offset % d < length) & (offset // d < size // d)

    keep = stripes(canvas_h, start_h)[:, None] | stripes(canvas_w, start_w)[None, :]
    top, left = (canvas_h - height) // 2, (canvas_w - width) // 2
    return keep[top : top + height, left : left + width].float()


class GridMask(nn.Module):
    def __init__(self, prob: float = 0.7, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0 <= prob <= 1:
            raise ValueError(f"grid mask prob must lie in [0, 1], got {prob}")
        self.prob = prob
        self.ratio = ratio

    def forward(self, images: Tensor) -> Tensor:
        """images [N, C, H, W]; unchanged in eval mode or when the draw says so."""
        if not self.training or float(torch.rand(())) >= self.prob:
            return images
        mask = grid_keep_mask(images.shape[-2], images.shape[-1], self.ratio)
        return images * mask.to(images.device, images.dtype)
