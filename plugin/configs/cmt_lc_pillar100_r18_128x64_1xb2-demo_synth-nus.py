# CPU demo: CMT at a scale that trains in minutes on 2 cores, on the synthetic
# nuScenes-format data set (`aqr-exp data synth`), evaluated by the real
# NuScenesMetric. Pillar LiDAR branch (mmcv has no CPU sparse convolution),
# ResNet-18 on 128x64 images, 128-d decoder of 3 layers, 200 queries.
#
# As in the seed's study, which fine-tuned every variant from CMT's epoch_20.pth,
# this config is the fine-tune: one epoch from the final checkpoint of the demo's
# pretrained CMT (cmt-pretrain_*, the spec's `init_from`). docs/demo.md measures it.
_base_ = ['./_base_/default_runtime.py']

data_root = '{{$AQR_DATA_ROOT:data/synth-nus/}}'
class_names = [
    'car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier',
    'motorcycle', 'bicycle', 'pedestrian', 'traffic_cone'
]
metainfo = dict(classes=class_names)
point_cloud_range = [-32.0, -32.0, -5.0, 32.0, 32.0, 3.0]
post_center_range = [-40.0, -40.0, -8.0, 40.0, 40.0, 8.0]
voxel_size = [1.0, 1.0, 8.0]  # pillars: a 64 x 64 BEV map
image_size = (64, 128)  # (H, W) fed to the image backbone
resize_lim = (0.38, 0.42)  # from the generated 320x180 images
sweeps_num = 1
embed_dims = 128
input_modality = dict(use_lidar=True, use_camera=True)
backend_args = None
camera_prefixes = dict(
    pts='samples/LIDAR_TOP', sweeps='sweeps/LIDAR_TOP',
    CAM_FRONT='samples/CAM_FRONT', CAM_FRONT_RIGHT='samples/CAM_FRONT_RIGHT',
    CAM_FRONT_LEFT='samples/CAM_FRONT_LEFT', CAM_BACK='samples/CAM_BACK',
    CAM_BACK_LEFT='samples/CAM_BACK_LEFT', CAM_BACK_RIGHT='samples/CAM_BACK_RIGHT')

model = dict(
    type='AqrCmtDetector',
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[103.530, 116.280, 123.675], std=[57.375, 57.120, 58.395],
        bgr_to_rgb=False, pad_size_divisor=32,
        voxel=True, voxel_type='hard',
        voxel_layer=dict(max_num_points=20, point_cloud_range=point_cloud_range,
                         voxel_size=voxel_size, max_voxels=(4096, 4096))),
    pts_voxel_encoder=dict(
        type='PillarFeatureNet', in_channels=5, feat_channels=[64], with_distance=False,
        voxel_size=voxel_size, point_cloud_range=point_cloud_range,
        norm_cfg=dict(type='BN1d', eps=1e-3, momentum=0.01)),
    pts_middle_encoder=dict(type='PointPillarsScatter', in_channels=64, output_shape=[64, 64]),
    pts_backbone=dict(
        type='SECOND', in_channels=64, out_channels=[32, 64], layer_nums=[1, 2],
        layer_strides=[1, 2], norm_cfg=dict(type='BN', eps=0.001, momentum=0.01),
        conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(
        type='SECONDFPN', in_channels=[32, 64], out_channels=[64, 64],
        upsample_strides=[1, 2], norm_cfg=dict(type='BN', eps=0.001, momentum=0.01),
        upsample_cfg=dict(type='deconv', bias=False), use_conv_for_no_stride=True),
    img_backbone=dict(
        type='mmdet.ResNet', depth=18, num_stages=4, out_indices=(2, 3), frozen_stages=-1,
        norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=False, style='pytorch'),
    img_neck=dict(type='CmtCPFPN', in_channels=[256, 512], out_channels=embed_dims),
    pts_bbox_head=dict(
        type='AqrCmtHead',
        in_channels=128,
        point_cloud_range=point_cloud_range,
        num_classes=len(class_names),
        embed_dims=embed_dims,
        num_query=200,
        depth_num=32,
        # Demo-only (docs/demo.md): more sine periods over the map and an init whose
        # cross-attention starts local; the full-scale configs keep CMT's 1.0 / None.
        pos_scale=8.0,
        local_attention_init=8.0,
        transformer=dict(
            type='AqrCmtTransformer',
            decoder=dict(type='CmtTransformerDecoder', num_layers=3, embed_dims=embed_dims,
                         num_heads=4, ffn_dims=512, dropout=0.0, self_attn_drop=0.0,
                         ffn_drop=0.0)),
        separate_head=dict(head_conv=64, final_kernel=1, init_bias=-2.19),
        bbox_coder=dict(type='CmtBBoxCoder', post_center_range=post_center_range,
                        max_num=100, num_classes=len(class_names)),
        assigner=dict(type='CmtHungarianAssigner3D', cls_weight=2.0, reg_weight=0.25),
        code_weights=[2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2],
        loss_cls_weight=2.0,
        loss_bbox_weight=0.25,
        dn_groups=5,
        aqr=None))

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5,
         backend_args=backend_args),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=sweeps_num, use_dim=[0, 1, 2, 3, 4],
         pad_empty_sweeps=True, remove_close=True, backend_args=backend_args),
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, num_views=6,
         backend_args=backend_args),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True, with_attr_label=False),
    dict(type='CmtGlobalRotScaleTrans', rot_range=[-0.3925, 0.3925],
         scale_ratio_range=[0.95, 1.05], translation_std=[0, 0, 0]),
    dict(type='CmtBEVFlip', flip_ratio_horizontal=0.5, flip_ratio_vertical=0.5),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    # One draw per view, as the demo was measured (docs/demo.md); CMT draws one per sample.
    dict(type='CmtImageAug', final_size=image_size, resize_lim=resize_lim, flip=True,
         training=True, per_sample=False),
    dict(type='CmtComposeLidar2Img'),
    dict(type='PointShuffle'),
    dict(type='Pack3DDetInputs', keys=['points', 'img', 'gt_bboxes_3d', 'gt_labels_3d']),
]
test_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5,
         backend_args=backend_args),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=sweeps_num, use_dim=[0, 1, 2, 3, 4],
         pad_empty_sweeps=True, remove_close=True, test_mode=True, backend_args=backend_args),
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, num_views=6,
         backend_args=backend_args),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='CmtImageAug', final_size=image_size, resize_lim=resize_lim, training=False),
    dict(type='CmtComposeLidar2Img'),
    dict(type='Pack3DDetInputs', keys=['points', 'img']),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='NuScenesDataset', data_root=data_root, ann_file='nuscenes_infos_train.pkl',
        pipeline=train_pipeline, metainfo=metainfo, modality=input_modality,
        data_prefix=camera_prefixes, test_mode=False, box_type_3d='LiDAR',
        use_valid_flag=True, backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='NuScenesDataset', data_root=data_root, ann_file='nuscenes_infos_val.pkl',
        pipeline=test_pipeline, metainfo=metainfo, modality=input_modality,
        data_prefix=camera_prefixes, test_mode=True, box_type_3d='LiDAR',
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CmtNuScenesMetric', data_root=data_root, ann_file=data_root + 'nuscenes_infos_val.pkl',
    metric='bbox', backend_args=backend_args)
test_evaluator = val_evaluator

# Schedule: the fine-tune of every compared variant, one epoch (80 iterations) from the
# pretrained CMT at a tenth of its peak learning rate, cosine to 1e-5. AdamW.
lr = 1e-4
max_epochs = 1
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.01),
    # As CMT's recipe, the image branch learns slower; here it also keeps its tokens
    # from growing into attention sinks (docs/demo.md).
    paramwise_cfg=dict(custom_keys={
        'img_backbone': dict(lr_mult=0.1), 'img_neck': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0,
         end=max_epochs, by_epoch=True, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(type='LoggerHook', interval=10))
