"""Results: runs → metrics.json → comparisons → reports.

One module, one job:

- `runs`: find run dirs, read/write run.yaml and metrics.json (the registry as seen from here)
- `nuscenes`, `training`, `record`: the metrics.json format and how it is assembled
- `collect`: an mmengine work dir → metrics.json; `legacy_log`: an mmdet3d ≤ 1.0 text log → the same
- `compare`: mean ± std over seeds, Δ vs the baseline, best values, warnings (all the numbers)
- `render`: a comparison as a terminal table, markdown or CSV
- `figures`, `report`: PNG figures and `results/<study>/report.md`

Every file is written with `aqr_exp.files.write_atomic`.
"""
