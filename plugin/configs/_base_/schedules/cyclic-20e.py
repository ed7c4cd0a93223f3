# CMT's schedule (R50 800x320): AdamW 1.4e-4, image backbone lr x0.01 and weight decay x5,
# image neck lr x0.1, grad clip 35, 20 epochs of mmcv 1.x's cyclic policy:
# lr_config target_ratio (6, 1e-4) and momentum_config target_ratio (0.85 / 0.95, 1),
# step_ratio_up 0.4. Those targets are ratios of each parameter group's own initial value,
# which mmengine's eta_min_ratio expresses: lr rises to 6x over epochs 0-8 and falls to
# 1e-4x by epoch 20; Adam's beta1 goes 0.9 -> 0.9 * 0.85 / 0.95 -> 0.9 alongside.
# Mixed precision with a dynamic loss scale, as CMT's fp16 hook (GPU only); the model's
# fp32_modules stay in float32.
lr = 1.4e-4
peak_lr_ratio = 6
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'img_backbone': dict(lr_mult=0.01, decay_mult=5),
        'img_neck': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=8, eta_min_ratio=peak_lr_ratio, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=12, eta_min_ratio=1e-4, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
    dict(type='CosineAnnealingMomentum', T_max=8, eta_min_ratio=0.85 / 0.95, begin=0, end=8,
         by_epoch=True, convert_to_iter_based=True),
    dict(type='CosineAnnealingMomentum', T_max=12, eta_min_ratio=1.0, begin=8, end=20,
         by_epoch=True, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=20)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(enable=False, base_batch_size=16)
