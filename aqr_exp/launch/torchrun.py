"""torchrun: one run on several GPUs of this node (mmengine launcher `pytorch`)."""

from __future__ import annotations

import sys

from aqr_exp.launch.base import TrainJob


def torchrun_command(job: TrainJob, nproc: int, master_port: int) -> list[str]:
    """`python -m torch.distributed.run` with an explicit master port, so several
    runs on one host never collide on the default 29500."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(master_port),
        *job.train_args(launcher="pytorch"),
    ]  # fmt: skip
