"""Launcher backends behind one interface (`base`): `local` (a pool of
subprocesses; several GPUs per run through `torchrun`); chosen in `backends`."""
