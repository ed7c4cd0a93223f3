# The CPU demo for a handful of iterations: one epoch on a tiny data set, then the
# real NuScenesMetric. Used by the tests; point AQR_DATA_ROOT at a small synthetic set.
_base_ = ['./cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py']

max_epochs = 1
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=10)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
train_dataloader = dict(num_workers=0, persistent_workers=False)
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(type='LoggerHook', interval=1))
