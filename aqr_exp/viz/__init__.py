"""Pictures of AQR: attention-bias windows on the cameras and the BEV map, and
statistics of the per-query modality weights."""

# What `--config` must name (kept here, light: the CLI checks it before importing mmdet3d).
CONFIG_EXPECTED = "an mmengine config file with AQR, e.g. one under plugin/configs/"
