# New AQR: the per-query LiDAR/camera weights become a local-window bias on the
# cross-attention logits of every decoder layer. Differs from the baseline only in
# the AQR block. The demo's camera feature maps are 4x8 cells (128x64 images at
# stride 16), so the camera window is fixed at 3 cells and `window_size` (the sweep)
# sets the BEV window (64x64 cells); at full scale it sets both.
_base_ = ['./cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py']

model = dict(
    pts_bbox_head=dict(
        aqr=dict(
            _delete_=True,
            type='new',
            weight_activation='tanh',
            encoder_window=5,
            window_size=8,
            bev_window=None,
            cam_window=3,
            window_profile='uniform',
            window_sigma=2.0,
            scope='local',
            bias_scale=2.5,
            learnable_scale=True,
            scale_min=0.0,
            scale_max=5.0,
            attn_impl='auto')))
