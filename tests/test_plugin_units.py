"""Known cases for the CMT plugin's building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mmdet3d.structures import LiDARInstance3DBoxes

from cmt_aqr.assigner import CmtHungarianAssigner3D
from cmt_aqr.box_coder import CmtBBoxCoder, decode_codes, encode_boxes
from cmt_aqr.denoising import build_denoising, dn_attention_mask
from cmt_aqr.head import AqrCmtHead, SceneContext
from cmt_aqr.positional import lift_pixels, ray_depths, sine_embedding
from cmt_aqr.transforms import CmtComposeLidar2Img, CmtGlobalRotScaleTrans, CmtImageAug


def test_box_encode_decode_round_trip() -> None:
    boxes = torch.tensor(
        [
            [1.0, -2.0, -1.5, 4.5, 1.9, 1.6, 0.3, 2.0, -1.0],
            [-20.0, 14.0, -0.5, 0.4, 0.4, 1.0, -2.8, 0.0, 0.0],
            [7.0, 7.0, 0.0, 11.0, 2.9, 3.5, math.pi - 0.01, -3.0, 0.5],
        ]
    )
    codes = encode_boxes(LiDARInstance3DBoxes(boxes, box_dim=9))
    # (cx, cy, log l, log w, cz at the gravity center, log h, sin, cos, vx, vy)
    assert torch.allclose(codes[0, 4], torch.tensor(-1.5 + 1.6 / 2))
    assert torch.allclose(codes[0, 2], torch.tensor(math.log(4.5)))
    decoded = decode_codes(codes)
    assert torch.allclose(decoded, boxes, atol=1e-5)


def test_assigner_solves_a_hand_built_problem() -> None:
    assigner = CmtHungarianAssigner3D(cls_weight=0.0, reg_weight=1.0)
    weights = torch.ones(10)
    gt = torch.zeros(2, 10)
    gt[0, :2] = torch.tensor([10.0, 0.0])
    gt[1, :2] = torch.tensor([0.0, 10.0])
    pred = torch.zeros(3, 10)
    pred[0, :2] = torch.tensor([0.5, 9.0])  # near GT 1
    pred[1, :2] = torch.tensor([50.0, 50.0])  # far from both
    pred[2, :2] = torch.tensor([9.5, 0.2])  # near GT 0
    assigned = assigner.assign(torch.zeros(3, 10), pred, torch.tensor([0, 1]), gt, weights)
    assert assigned.tolist() == [1, -1, 0]


def test_assigner_class_cost_prefers_the_confident_query() -> None:
    assigner = CmtHungarianAssigner3D(cls_weight=1.0, reg_weight=0.0)
    logits = torch.full((2, 10), -5.0)
    logits[1, 3] = 5.0
    assigned = assigner.assign(
        logits, torch.zeros(2, 10), torch.tensor([3]), torch.zeros(1, 10), torch.ones(10)
    )
    assert assigned.tolist() == [-1, 0]


def test_assigner_without_gt_assigns_nothing() -> None:
    assigned = CmtHungarianAssigner3D().assign(
        torch.zeros(4, 10),
        torch.zeros(4, 10),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 10),
        torch.ones(10),
    )
    assert assigned.tolist() == [-1] * 4


def test_dn_mask_structure() -> None:
    groups, per_group, num_query = 3, 2, 4
    pad = groups * per_group
    blocked = dn_attention_mask(pad, groups, num_query, torch.device("cpu"))
    assert blocked.shape == (pad + num_query, pad + num_query)
    # matching queries never see DN queries, but see each other
    assert blocked[pad:, :pad].all()
    assert not blocked[pad:, pad:].any()
    # DN queries see their own group and the matching queries, not other groups
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        own = blocked[rows, g * per_group : (g + 1) * per_group]
        assert not own.any()
        assert not blocked[rows, pad:].any()
        others = torch.ones(pad, dtype=torch.bool)
        others[g * per_group : (g + 1) * per_group] = False
        assert blocked[rows][:, :pad][:, others].all()


def test_dn_groups_guard_zero_gt_and_cap_by_query_count() -> None:
    pc_range = torch.tensor([-50.0, -50.0, -5.0, 50.0, 50.0, 3.0])
    empty = build_denoising(
        [torch.zeros(0, 3)],
        [torch.zeros(0, 3)],
        [torch.zeros(0, dtype=torch.long)],
        pc_range,
        900,
        10,
    )
    assert empty is None
    centers = [torch.zeros(300, 3), torch.zeros(1, 3)]
    dims = [torch.ones(300, 3), torch.ones(1, 3)]
    labels = [torch.zeros(300, dtype=torch.long), torch.ones(1, dtype=torch.long)]
    plan = build_denoising(centers, dims, labels, pc_range, 900, 10, max_groups=10)
    assert plan is not None
    assert plan.num_groups == 3  # min(10, 900 // 300)
    assert plan.pad_size == 900
    # the sample with one GT fills one slot per group; the rest is padding
    assert (plan.gt_index[1] >= 0).sum() == 3
    assert ((plan.ref_points >= 0) & (plan.ref_points <= 1)).all()


def _scene(batch: int = 1) -> SceneContext:
    mats = []
    for yaw in np.deg2rad([0.0, 180.0]):
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.stack([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
        extr = np.eye(4)
        extr[:3, :3] = rot
        intr = np.eye(4)
        intr[0, 0] = intr[1, 1] = 100.0
        intr[0, 2], intr[1, 2] = 64.0, 32.0
        mats.append(intr @ extr)
    lidar2img = torch.tensor(np.stack(mats), dtype=torch.float32)[None].expand(batch, -1, -1, -1)
    return SceneContext(lidar2img=lidar2img, image_size=(64, 128), bev_size=(8, 8), cam_size=(4, 8))


def _small_head() -> AqrCmtHead:
    head = AqrCmtHead(
        in_channels=16,
        point_cloud_range=[-20.0, -20.0, -5.0, 20.0, 20.0, 3.0],
        embed_dims=32,
        num_query=10,
        depth_num=8,
        transformer=dict(
            type="AqrCmtTransformer",
            decoder=dict(
                type="CmtTransformerDecoder", num_layers=2, embed_dims=32, num_heads=4, ffn_dims=64
            ),
        ),
    )
    head.init_weights()
    return head


def _cmt_pos2embed(x: float, y: float, num_feats: int) -> list[float]:
    """CMT's pos2embed for one point, feature by feature: feature i of an axis is
    sin (i even) or cos (i odd) of 2π·coord / (1 + 2 (i // 2) / num_feats); y first."""

    def axis(coord: float) -> list[float]:
        return [
            (math.sin if i % 2 == 0 else math.cos)(
                2 * math.pi * coord / (1 + 2 * (i // 2) / num_feats)
            )
            for i in range(num_feats)
        ]

    return axis(y) + axis(x)


def _cmt_rv_input(
    point: np.ndarray, lidar2img: np.ndarray, image_hw: tuple[int, int], pc_range: np.ndarray,
    depth_num: int,
) -> np.ndarray | None:  # fmt: skip
    """CMT's _rv_query_embed for one normalized point and one camera, in float64: None
    where the camera does not see it, else its pixel lifted to CMT's depth bins and
    normalized by the range, flattened (depth, xyz)."""
    lo, hi = pc_range[:3], pc_range[3:]
    cam = lidar2img @ np.append(point * (hi - lo) + lo, 1.0)
    if cam[2] <= 0:
        return None
    u, v = cam[0] / cam[2], cam[1] / cam[2]
    if not (0 <= u < image_hw[1] and 0 <= v < image_hw[0]):
        return None
    depths = 1 + np.arange(depth_num) * (pc_range[3] - 1) / depth_num
    back = [(np.linalg.inv(lidar2img) @ np.array([u * d, v * d, d, 1.0]))[:3] for d in depths]
    return ((np.array(back) - lo) / (hi - lo)).reshape(-1)


def test_query_position_embedding_follows_cmts_formulas() -> None:
    """bev_embedding(sine(x, y)) plus rv_embedding(pixel lifted along its ray) summed over
    the cameras that see the point, checked against a float64 re-computation of CMT's
    pos2embed / _rv_query_embed."""
    torch.manual_seed(0)
    head = _small_head()
    ref = torch.rand(2, 10, 3)
    ref[0, 0] = torch.tensor([0.5, 0.5, 0.5])  # at the sensor: visible in no camera
    ref[0, 1] = torch.tensor([0.7625, 0.55, 0.5])  # (10.5, 2, -1) m: front camera, 10.5 m deep
    ref[0, 2] = torch.tensor([0.2, 0.45, 0.6])  # (-12, -2, -0.2) m: back camera
    scene = _scene(batch=2)
    pixels, visible = head.project_to_images(ref, scene)
    with torch.no_grad():
        pos = head.query_positions(ref, scene, pixels, visible)

    pc_range = head.pc_range.double().numpy()
    mats = scene.lidar2img.double().numpy()
    for b in range(2):
        for q in range(10):
            point = ref[b, q].double().numpy()
            sine = torch.tensor([_cmt_pos2embed(point[0], point[1], 32)])
            rv_inputs = [
                _cmt_rv_input(point, mats[b, v], scene.image_size, pc_range, head.depth_num)
                for v in range(2)
            ]
            assert visible[b, :, q].tolist() == [x is not None for x in rv_inputs]
            with torch.no_grad():
                expected = head.bev_embedding(sine.float())[0]
                for rv_input in rv_inputs:
                    if rv_input is not None:
                        expected += head.rv_embedding(torch.tensor(rv_input).float())
            assert torch.allclose(pos[b, q], expected, atol=1e-4), (b, q)

    assert visible[0, :, 1].tolist() == [True, False]
    assert visible[0, :, 2].tolist() == [False, True]
    # The lifted ray passes through the point: depth bin 4 of 8 is 1 + 4 · 19/8 = 10.5 m.
    depths = ray_depths(head.depth_num, 20.0, ref.device)
    img2lidar = torch.linalg.inv(scene.lidar2img)
    lifted = lift_pixels(pixels, depths, img2lidar, head.pc_range)[0, 0, 1].view(-1, 3)
    assert torch.allclose(lifted[4], ref[0, 1], atol=1e-5)
    # The camera term is not negligible: the seen point differs from its BEV part alone.
    with torch.no_grad():
        bev_only = head.bev_embedding(sine_embedding(ref[0, 1], 32))
    assert not torch.allclose(pos[0, 1], bev_only, atol=1e-2)


def test_projection_picks_the_camera_that_sees_the_point() -> None:
    head = _small_head()
    ref = torch.tensor([[[0.75, 0.5, 0.5], [0.25, 0.5, 0.5]]])  # x = +10 m and x = -10 m
    pixels, visible = head.project_to_images(ref, _scene())
    assert visible[0, :, 0].tolist() == [True, False]  # the front camera sees x > 0
    assert visible[0, :, 1].tolist() == [False, True]
    # z = -1 m at 10 m depth: 10 px below the principal point
    assert torch.allclose(pixels[0, 0, 0], torch.tensor([64.0, 42.0]), atol=1e-3)


def test_decoding_keeps_top_k_and_respects_the_post_center_range() -> None:
    coder = CmtBBoxCoder(
        post_center_range=[-10.0, -10.0, -5.0, 10.0, 10.0, 5.0], max_num=3, num_classes=2
    )
    logits = torch.full((4, 2), -10.0)
    logits[0, 1] = 3.0  # best, inside
    logits[1, 0] = 2.0  # second, outside the range
    logits[2, 0] = 1.0  # third, inside
    logits[3, 1] = 0.0  # fourth: cut by top-3
    codes = torch.zeros(4, 10)
    codes[:, 7] = 1.0  # cos = 1
    codes[1, 0] = 30.0
    out = coder.decode(logits, codes)
    assert out["labels"].tolist() == [1, 0]
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    assert out["bboxes"].shape == (2, 9)


def _camera_results() -> dict:
    extr = np.eye(4)
    extr[:3, :3] = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    intr = np.array([[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]])
    return {"img": [np.zeros((90, 160, 3), np.uint8)], "cam2img": [intr], "lidar2cam": [extr]}


def _project(results: dict, point: np.ndarray) -> np.ndarray:
    cam = results["lidar2img"][0] @ np.append(point, 1.0)
    return cam[:2] / cam[2]


def test_image_augmentation_moves_projections_with_the_pixels() -> None:
    results = CmtComposeLidar2Img()(_camera_results())
    point = np.array([10.0, 1.0, 0.5])
    before = _project(results, point)
    # At test time CMT resizes by max(45 / 90, 64 / 160) = 0.5, whatever resize_lim says.
    aug = CmtImageAug(final_size=(45, 64), resize_lim=(0.9, 1.1), training=False)
    after = _project(CmtComposeLidar2Img()(aug(_camera_results())), point)
    # resized by 0.5 (80x45), no row cropped, centered crop of 16 columns
    assert np.allclose(after, before * 0.5 - np.array([8.0, 0.0]), atol=1e-6)
    aug = CmtImageAug(final_size=(40, 64), resize_lim=(0.9, 1.1), training=False)
    after = _project(CmtComposeLidar2Img()(aug(_camera_results())), point)
    # resized by max(40 / 90, 0.4) = 4 / 9 (71x40), centered crop of 7 // 2 = 3 columns
    assert np.allclose(after, before * 4 / 9 - np.array([3.0, 0.0]), atol=1e-4)


def test_global_augmentation_keeps_points_on_their_pixels() -> None:
    from mmdet3d.structures import LiDARPoints

    np.random.seed(0)
    point = np.array([[10.0, 1.0, 0.5, 0.0, 0.0]], dtype=np.float32)
    results = _camera_results()
    results["points"] = LiDARPoints(point.copy(), points_dim=5)
    results["gt_bboxes_3d"] = LiDARInstance3DBoxes(torch.tensor([[10.0, 1.0, 0.0, 1, 1, 1, 0]]))
    before = _project(CmtComposeLidar2Img()(_camera_results()), point[0, :3])
    aug = CmtGlobalRotScaleTrans(
        rot_range=[-0.5, 0.5], scale_ratio_range=[0.9, 1.1], translation_std=[1, 1, 0]
    )
    results = CmtComposeLidar2Img()(aug(results))
    moved = results["points"].tensor[0, :3].numpy()
    assert not np.allclose(moved, point[0, :3])
    assert np.allclose(_project(results, moved), before, atol=1e-3)


@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_bev_flip_keeps_points_on_their_pixels(direction: str) -> None:
    from mmdet3d.structures import LiDARPoints

    from cmt_aqr.transforms import CmtBEVFlip

    point = np.array([[10.0, 1.0, 0.5, 0.0, 0.0]], dtype=np.float32)
    results = _camera_results()
    results["points"] = LiDARPoints(point.copy(), points_dim=5)
    before = _project(CmtComposeLidar2Img()(_camera_results()), point[0, :3])
    ratios = (1.0, 0.0) if direction == "horizontal" else (0.0, 1.0)
    results = CmtComposeLidar2Img()(CmtBEVFlip(*ratios)(results))
    moved = results["points"].tensor[0, :3].numpy()
    assert results[f"pcd_{direction}_flip"]
    assert np.allclose(_project(results, moved), before, atol=1e-4)


@pytest.mark.parametrize("per_sample", [True, False])
def test_image_augmentation_draws_once_per_sample_as_cmt(per_sample: bool) -> None:
    np.random.seed(0)
    views = 6
    results = {
        "img": [np.full((90, 160, 3), 10 * v, np.uint8) for v in range(views)],
        "cam2img": [np.eye(3)] * views,
        "lidar2cam": [np.eye(4)] * views,
    }
    aug = CmtImageAug(
        final_size=(40, 64), resize_lim=(0.5, 0.9), flip=True, training=True, per_sample=per_sample
    )
    posts = aug(results)["cam2img"]
    distinct = {tuple(np.round(post, 9).ravel()) for post in posts}
    # One draw: every view resized, cropped and flipped alike; per view: 6 different draws.
    assert len(distinct) == (1 if per_sample else views)


def test_image_augmentation_per_sample_needs_views_of_one_size() -> None:
    results = {
        "img": [np.zeros((90, 160, 3), np.uint8), np.zeros((80, 160, 3), np.uint8)],
        "cam2img": [np.eye(3)] * 2,
        "lidar2cam": [np.eye(4)] * 2,
    }
    with pytest.raises(ValueError, match=r"\(90, 160\) and \(80, 160\)"):
        CmtImageAug(final_size=(40, 64), resize_lim=(0.5, 0.9))(results)
