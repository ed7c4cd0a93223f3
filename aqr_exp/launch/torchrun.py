"""torchrun: one run on several GPUs of this node (mmengine launcher `pytorch`).

The local pool with `torch.distributed.run` in front of each training: the same
processes to observe and stop as the local backend's.
"""

from __future__ import annotations

from aqr_exp.launch import backends
from aqr_exp.launch.base import Launcher
from aqr_exp.launch.local import LocalBackend, LocalLauncher
from aqr_exp.spec import LauncherSettings


@backends.register
class TorchrunBackend(LocalBackend):
    name = "torchrun"

    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        return LocalLauncher(settings.max_concurrent, settings.gpus_per_run, torchrun=True)
