# Old AQR: per-query LiDAR/camera weights splatted into weight maps that modulate
# the BEV and camera features (F' = F * W + r * F). Differs from the baseline only
# in the AQR block. Sigmoid weights: the maps are clamped to [0, max_weight].
_base_ = ['./cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py']

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
