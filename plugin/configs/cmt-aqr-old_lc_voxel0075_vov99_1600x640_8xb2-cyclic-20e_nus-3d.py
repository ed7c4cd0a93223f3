# Old AQR: per-query LiDAR/camera weights splatted into weight maps that modulate
# the BEV and camera features (F' = F * W + r * F). Differs from the baseline only
# in the AQR block. Sigmoid weights: the maps are clamped to [0, max_weight].
_base_ = ['./cmt_lc_voxel0075_vov99_1600x640_8xb2-cyclic-20e_nus-3d.py']

model = dict(
    pts_bbox_head=dict(
        aqr=dict(
            _delete_=True,
            type='old',
            weight_activation='sigmoid',
            encoder_window=5,
            render_kernel='gaussian',
            render_sigma=1.0,
            max_weight=1.5,
            residual=0.7)))
