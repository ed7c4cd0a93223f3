# CMT, LiDAR + camera, voxel 0.1 m, ResNet-50 at 800x320: CMT's published R50 setting
# (nuScenes val: mAP 67.9 / NDS 70.8). Sparse LiDAR encoder: GPU only.
# Remaining differences from the official config: docs/fidelity.md.
_base_ = ['./_base_/default_runtime.py', './_base_/schedules/cyclic-20e.py']

data_root = '{{$AQR_DATA_ROOT:data/nuscenes/}}'
class_names = [
    'car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier',
    'motorcycle', 'bicycle', 'pedestrian', 'traffic_cone'
]
metainfo = dict(classes=class_names)
# CMT's range: the head normalizes positions and decodes boxes in it. Its sparse grid is
# 1024 x 1024 voxels (BEV 128 x 128), which covers -54 m .. 48.4 m: the voxelizer keeps
# what fits that grid (see docs/fidelity.md).
point_cloud_range = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
voxel_range = [-54.0, -54.0, -5.0, 48.4, 48.4, 3.0]
post_center_range = [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]
voxel_size = [0.1, 0.1, 0.2]
image_size = (320, 800)  # (H, W) fed to the image backbone
resize_lim = (0.47, 0.625)  # from the 1600x900 originals
sweeps_num = 10  # non-key sweeps besides the key frame, as CMT (mmdet3d 1.x configs use 9)
input_modality = dict(use_lidar=True, use_camera=True)
backend_args = None
camera_prefixes = dict(
    pts='samples/LIDAR_TOP', sweeps='sweeps/LIDAR_TOP',
    CAM_FRONT='samples/CAM_FRONT', CAM_FRONT_RIGHT='samples/CAM_FRONT_RIGHT',
    CAM_FRONT_LEFT='samples/CAM_FRONT_LEFT', CAM_BACK='samples/CAM_BACK',
    CAM_BACK_LEFT='samples/CAM_BACK_LEFT', CAM_BACK_RIGHT='samples/CAM_BACK_RIGHT')

model = dict(
    type='AqrCmtDetector',
    use_grid_mask=True,
    # Under the schedule's mixed precision these stay in fp32, as CMT's custom_fp16.
    fp32_modules=['pts_voxel_encoder', 'pts_middle_encoder', 'pts_bbox_head'],
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[103.530, 116.280, 123.675], std=[57.375, 57.120, 58.395],
        bgr_to_rgb=False, pad_size_divisor=32,
        voxel=True, voxel_type='hard',
        voxel_layer=dict(max_num_points=10, point_cloud_range=voxel_range,
                         voxel_size=voxel_size, max_voxels=(120000, 160000))),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(
        type='SparseEncoder', in_channels=5, sparse_shape=[41, 1024, 1024],
        output_channels=128, order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
        block_type='basicblock'),
    pts_backbone=dict(
        type='SECOND', in_channels=256, out_channels=[128, 256], layer_nums=[5, 5],
        layer_strides=[1, 2], norm_cfg=dict(type='BN', eps=0.001, momentum=0.01),
        conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(
        type='SECONDFPN', in_channels=[128, 256], out_channels=[256, 256],
        upsample_strides=[1, 2], norm_cfg=dict(type='BN', eps=0.001, momentum=0.01),
        upsample_cfg=dict(type='deconv', bias=False), use_conv_for_no_stride=True),
    img_backbone=dict(
        type='mmdet.ResNet', depth=50, num_stages=4, out_indices=(2, 3), frozen_stages=-1,
        norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=True, style='pytorch',
        with_cp=True,
        # CMT's nuImages-pretrained R50 (its config's `load_from`); every tensor must load.
        init_cfg=dict(type='CmtPretrainedBackbone', checkpoint=data_root + 'ckpts/nuim_r50.pth')),
    img_neck=dict(type='CmtCPFPN', in_channels=[1024, 2048], out_channels=256),
    pts_bbox_head=dict(
        type='AqrCmtHead',
        in_channels=512,
        point_cloud_range=point_cloud_range,
        num_classes=len(class_names),
        embed_dims=256,
        num_query=900,
        depth_num=64,
        transformer=dict(
            type='AqrCmtTransformer',
            decoder=dict(type='CmtTransformerDecoder', num_layers=6, embed_dims=256,
                         num_heads=8, ffn_dims=1024, dropout=0.1, self_attn_drop=0.1,
                         ffn_drop=0.0)),
        separate_head=dict(head_conv=64, final_kernel=1, init_bias=-2.19),
        bbox_coder=dict(type='CmtBBoxCoder', post_center_range=post_center_range,
                        max_num=300, num_classes=len(class_names)),
        assigner=dict(type='CmtHungarianAssigner3D', cls_weight=2.0, reg_weight=0.25),
        code_weights=[2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2],
        loss_cls_weight=2.0,
        loss_bbox_weight=0.25,
        dn_groups=10,
        aqr=None))

# CMT's multi-modal GT-sampling (UnifiedObjectSample): database objects pasted into the
# points and, blended 50/50, into the images; its database comes from
# `aqr-exp data prepare nuscenes`. Off for the last 5 of the 20 epochs (custom_hooks).
gt_sampling = dict(
    type='CmtUnifiedObjectSample', sample_2d=True, mixup_rate=0.5,
    db_sampler=dict(
        data_root=data_root, info_path=data_root + 'nuscenes_dbinfos_train.pkl', rate=1.0,
        prepare=dict(
            filter_by_difficulty=[-1],
            filter_by_min_points=dict(
                car=5, truck=5, bus=5, trailer=5, construction_vehicle=5, traffic_cone=5,
                barrier=5, motorcycle=5, bicycle=5, pedestrian=5)),
        classes=class_names,
        sample_groups=dict(
            car=2, truck=3, construction_vehicle=7, bus=4, trailer=6, barrier=2, motorcycle=6,
            bicycle=6, pedestrian=2, traffic_cone=2),
        points_loader=dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5,
                           use_dim=[0, 1, 2, 3, 4], backend_args=backend_args)))
custom_hooks = [dict(type='CmtObjectSampleSwitchHook', switch_epoch=15)]

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5,
         backend_args=backend_args),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=sweeps_num, use_dim=[0, 1, 2, 3, 4],
         pad_empty_sweeps=True, remove_close=True, backend_args=backend_args),
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, num_views=6,
         backend_args=backend_args),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True, with_attr_label=False),
    gt_sampling,
    dict(type='CmtGlobalRotScaleTrans', rot_range=[-0.785, 0.785],
         scale_ratio_range=[0.9, 1.1], translation_std=[0.5, 0.5, 0.5]),
    dict(type='CmtBEVFlip', flip_ratio_horizontal=0.5, flip_ratio_vertical=0.5),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='CmtImageAug', final_size=image_size, resize_lim=resize_lim, flip=True,
         training=True),
    dict(type='CmtModalityMask', camera_prob=0.25, lidar_prob=0.25),
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
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CBGSDataset',
        dataset=dict(
            type='NuScenesDataset', data_root=data_root,
            ann_file='nuscenes_infos_train.pkl', pipeline=train_pipeline,
            metainfo=metainfo, modality=input_modality, data_prefix=camera_prefixes,
            test_mode=False, box_type_3d='LiDAR', use_valid_flag=True,
            backend_args=backend_args)))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
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
