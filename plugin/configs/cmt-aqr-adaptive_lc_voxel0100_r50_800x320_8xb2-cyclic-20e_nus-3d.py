# New AQR with adaptive windows: each query predicts how far it looks, per modality, as
# the extent (cells) of a Gaussian window within 3-15 cells on the BEV and on the
# cameras. σ = extent / (2 * window_cut).
_base_ = ['./cmt-aqr-new_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py']

model = dict(
    pts_bbox_head=dict(
        aqr=dict(
            window_mode='adaptive',
            window_profile='gaussian',
            window_min=3.0,
            window_max=15,
            cam_window_min=3.0,
            cam_window_max=15,
            window_cut=2.0)))
