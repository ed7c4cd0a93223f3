# New AQR with adaptive windows: each query predicts how far it looks, per modality, as
# the extent (cells) of a Gaussian window: BEV 3-15 cells (the window_size sweep's range),
# camera 1-3 cells (the demo's camera maps are 4x8). σ = extent / (2 * window_cut).
_base_ = ['./cmt-aqr-new_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py']

model = dict(
    pts_bbox_head=dict(
        aqr=dict(
            window_mode='adaptive',
            window_profile='gaussian',
            window_min=3.0,
            window_max=15,
            cam_window_min=1.0,
            cam_window_max=3,
            window_cut=2.0)))
