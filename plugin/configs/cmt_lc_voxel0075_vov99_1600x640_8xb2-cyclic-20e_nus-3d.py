# CMT, LiDAR + camera, voxel 0.075 m, VoVNet-99 at 1600x640: CMT's published best
# setting (nuScenes val: mAP 70.3 / NDS 72.9). Sparse LiDAR encoder: GPU only.
_base_ = ['./cmt_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py']

data_root = '{{$AQR_DATA_ROOT:data/nuscenes/}}'  # as the base's: the weights' path starts with it
point_cloud_range = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]  # 1440 x 1440 voxels -> BEV 180 x 180
voxel_range = point_cloud_range
voxel_size = [0.075, 0.075, 0.2]
image_size = (640, 1600)
resize_lim = (0.94, 1.25)

model = dict(
    data_preprocessor=dict(
        voxel_layer=dict(voxel_size=voxel_size, point_cloud_range=voxel_range)),
    pts_middle_encoder=dict(sparse_shape=[41, 1440, 1440]),
    img_backbone=dict(
        _delete_=True, type='CmtVoVNet', spec_name='V-99-eSE', out_features=('stage4', 'stage5'),
        norm_eval=True, frozen_stages=-1,
        # CMT's FCOS3D-pretrained VoV-99 (its config's `load_from`); every tensor must load.
        init_cfg=dict(type='CmtPretrainedBackbone',
                      checkpoint=data_root + 'ckpts/fcos3d_vovnet_imgbackbone-remapped.pth')),
    img_neck=dict(in_channels=[768, 1024]),
    pts_bbox_head=dict(point_cloud_range=point_cloud_range))

backend_args = None
sweeps_num = 10  # as CMT
class_names = {{_base_.class_names}}

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=5, use_dim=5,
         backend_args=backend_args),
    dict(type='LoadPointsFromMultiSweeps', sweeps_num=sweeps_num, use_dim=[0, 1, 2, 3, 4],
         pad_empty_sweeps=True, remove_close=True, backend_args=backend_args),
    dict(type='LoadMultiViewImageFromFiles', to_float32=False, num_views=6,
         backend_args=backend_args),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True, with_attr_label=False),
    {{_base_.gt_sampling}},
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

train_dataloader = dict(batch_size=2, dataset=dict(dataset=dict(pipeline=train_pipeline)))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# CMT's VoV-99 recipe: AdamW 1e-4 with the lr rising to 8x (R50: 1.4e-4, 6x); the rest of
# the cyclic schedule as the R50 one (_base_/schedules/cyclic-20e.py).
lr = 1e-4
peak_lr_ratio = 8
optim_wrapper = dict(optimizer=dict(lr=lr))
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
