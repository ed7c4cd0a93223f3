# The demo's pretrained CMT: the baseline trained from scratch, the stand-in for the
# official CMT checkpoint (epoch_20.pth) that every compared variant is fine-tuned from
# (the spec's `init_from`). 10 epochs of 80 iterations, AdamW at 1e-3 with warm-up
# and cosine decay: what fits, with the five fine-tunes, in the demo's 20 minutes on
# 2 cores (docs/demo.md).
_base_ = ['./cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py']

lr = 1e-3
max_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=lr))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=lr * 0.05, begin=0,
         end=max_epochs, by_epoch=True, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
