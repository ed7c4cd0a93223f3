# New AQR: the per-query LiDAR/camera weights become a local-window bias on the
# cross-attention logits of every decoder layer. Differs from the baseline only in
# the AQR block.
_base_ = ['./cmt_lc_voxel0075_vov99_1600x640_8xb2-cyclic-20e_nus-3d.py']

model = dict(
    pts_bbox_head=dict(
        aqr=dict(
            _delete_=True,
            type='new',
            weight_activation='tanh',
            encoder_window=5,
            window_size=8,
            bev_window=None,
            cam_window=None,
            window_profile='uniform',
            window_sigma=2.0,
            scope='local',
            bias_scale=2.5,
            learnable_scale=True,
            scale_min=0.0,
            scale_max=5.0,
            attn_impl='auto')))
