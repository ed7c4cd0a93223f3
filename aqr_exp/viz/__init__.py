"""Pictures of AQR: attention-bias windows on the cameras and the BEV map, and
statistics of the per-query modality weights."""
