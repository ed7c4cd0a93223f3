"""Reading a checkpoint a user names (`viz --checkpoint`, `train --resume CHECKPOINT`).

A checkpoint is a pickle: loading one can run any code it asks for. torch.load's
weights-only unpickler (the default since torch 2.6) refuses such files, but its
message then advises `weights_only=False`, i.e. running that code. Here a
checkpoint is always read with `weights_only=True` (plus the few mmengine types
allowed by `allow_mmengine_checkpoints`), a file that is not a torch file is
refused before any unpickler sees it, and every failure is one line naming the
file, without that advice.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from aqr_exp.errors import AqrError, one_line
from aqr_exp.files import check_input_file

EXPECTED = "a .pth checkpoint written by torch.save (e.g. work_dirs/<run>/epoch_N.pth)"
# How torch.save's two formats begin: a zip archive (torch >= 1.6), or the pickled
# magic number of the legacy format.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TORCH_ADVICE = ("weights_only", "weights only", "documentation of torch.load", "(2) ")


def _history_buffer_method(owner: object, name: str) -> object:
    """`getattr` as mmengine checkpoints need it, and nothing more: HistoryBuffer
    pickles its statistics methods as getattr(HistoryBuffer, 'mean') etc."""
    method = getattr(owner, name, None) if owner is HistoryBuffer else None
    if name.startswith("_") or not callable(method):
        raise pickle.UnpicklingError(f"checkpoint asks for getattr({owner!r}, {name!r}): refused")
    return method


def allow_mmengine_checkpoints() -> None:
    """Let torch >= 2.6's weights-only unpickler read mmengine checkpoints.

    Allow-listing the few types they contain (and a getattr restricted to
    HistoryBuffer's methods) keeps weights_only's protection for everything
    else: a checkpoint with other globals still fails to load.
    """
    multiarray = np.core.multiarray
    dtypes = [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals(
        [
            HistoryBuffer,
            np.ndarray,
            np.dtype,
            *dtypes,
            multiarray._reconstruct,
            multiarray.scalar,
            (_history_buffer_method, "builtins.getattr"),
        ]
    )


def read_checkpoint(path: Path, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint at `path` (tensors memory-mapped when the format allows it, so
    checking a large file first costs little), or an AqrError saying why it is not one."""
    check_input_file(path, what, EXPECTED)
    try:
        with path.open("rb") as stream:
            head = stream.read(len(_LEGACY_MAGIC))
    except OSError as err:
        raise AqrError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    is_zip = head.startswith(_ZIP_MAGIC)
    if not is_zip and head != _LEGACY_MAGIC:
        raise _not_loadable(path, what, "it is not a file written by torch.save")
    allow_mmengine_checkpoints()
    try:
        with warnings.catch_warnings():
            # A pickle protocol torch.save does not write: refused below if it matters.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        reason = _torch_reason(err)
        raise _not_loadable(
            path,
            what,
            "PyTorch's safe weights-only loading refused it" + (f" ({reason})" if reason else ""),
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError) as err:
        reason = _torch_reason(err)
        raise _not_loadable(
            path, what, "a truncated or corrupt torch file" + (f" ({reason})" if reason else "")
        ) from None
    if not isinstance(checkpoint, dict):
        raise _not_loadable(
            path, what, f"it holds a {type(checkpoint).__name__}, not a dict of weights"
        )
    return checkpoint


def _not_loadable(path: Path, what: str, why: str) -> AqrError:
    return AqrError(f"{what} {path}: not a loadable checkpoint: {why}")


def _torch_reason(err: Exception) -> str:
    """torch's explanation of a failed load, without its advice to load unsafely: the
    first line that is not about weights_only, up to its first sentence's end."""
    for line in _ANSI.sub("", str(err)).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not any(advice in line.lower() for advice in _TORCH_ADVICE):
            return one_line(line.split(". ")[0].rstrip("."))
    return ""
