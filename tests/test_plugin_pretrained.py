"""Pretrained image backbones (CMT's nuImages R50 / FCOS3D VoV-99): the full-scale configs
load every tensor from a file under the data root, or stop with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

import cmt_aqr  # noqa: F401  (registers the plugin's initializer, as the configs' custom_imports)
from aqr_exp import configs
from aqr_exp.paths import PLUGIN_CONFIGS

R50 = "cmt_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py"
VOV = "cmt_lc_voxel0075_vov99_1600x640_8xb2-cyclic-20e_nus-3d.py"


def _config(name: str, data_root: Path) -> configs.Config:
    init_default_scope("mmdet3d")
    cfg = configs.load_config(PLUGIN_CONFIGS / name)
    configs.set_data_root(cfg, data_root)
    return cfg


def _backbone(cfg: configs.Config, **changes: object) -> torch.nn.Module:
    return MODELS.build({**cfg.model.img_backbone, **changes})


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _save(path: Path, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {prefix + k: v for k, v in tensors.items()}}, path)


@pytest.mark.parametrize("name", [R50, VOV])
def test_full_scale_configs_start_from_cmts_pretrained_backbones(name: str, tmp_path: Path) -> None:
    cfg = _config(name, tmp_path)
    file = {R50: "nuim_r50.pth", VOV: "fcos3d_vovnet_imgbackbone-remapped.pth"}[name]
    assert configs.pretrained_files(cfg) == [
        ("model.img_backbone.init_cfg.checkpoint", str(tmp_path / "ckpts" / file))
    ]


@pytest.mark.parametrize("prefix", ["img_backbone.", "backbone.", ""])
def test_every_backbone_tensor_is_loaded_from_the_file(prefix: str, tmp_path: Path) -> None:
    """CMT's files (img_backbone.*), an mmdet detector's (backbone.*) and a bare backbone's."""
    cfg = _config(R50, tmp_path)
    weights = _tensors(_backbone(cfg, init_cfg=None))
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
    _save(tmp_path / "ckpts" / "nuim_r50.pth", weights, prefix)
    backbone = _backbone(cfg)
    backbone.init_weights()
    loaded = _tensors(backbone)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_the_detector_keeps_the_pretrained_backbone_after_its_own_init(tmp_path: Path) -> None:
    """The detector's init_weights runs every part's init: none may overwrite the file's."""
    cfg = _config(R50, tmp_path)
    weights = {k: torch.randn_like(v) for k, v in _tensors(_backbone(cfg, init_cfg=None)).items()}
    _save(tmp_path / "ckpts" / "nuim_r50.pth", weights, "img_backbone.")
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded = _tensors(model.img_backbone)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_a_missing_file_names_it_and_where_users_get_it(tmp_path: Path) -> None:
    backbone = _backbone(_config(R50, tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        backbone.init_weights()
    message = str(err.value)
    assert str(tmp_path / "ckpts" / "nuim_r50.pth") in message
    assert "junjie18/CMT" in message and "nuim_r50.pth (R50)" in message


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    cfg = _config(R50, tmp_path)
    path = tmp_path / "ckpts" / "nuim_r50.pth"
    r18 = _tensors(_backbone(cfg, init_cfg=None, depth=18, out_indices=(3,)))
    _save(path, r18, "img_backbone.")
    with pytest.raises(ValueError, match=r"tensors \(looked for keys under") as err:
        _backbone(cfg).init_weights()
    assert str(path) in str(err.value) and "weights of another backbone?" in str(err.value)


def test_a_file_lacking_one_tensor_is_refused(tmp_path: Path) -> None:
    cfg = _config(R50, tmp_path)
    weights = _tensors(_backbone(cfg, init_cfg=None))
    dropped = "layer4.2.conv3.weight"
    del weights[dropped]
    _save(tmp_path / "ckpts" / "nuim_r50.pth", weights, "backbone.")
    with pytest.raises(ValueError, match="no weights for 1 of the image backbone's") as err:
        _backbone(cfg).init_weights()
    assert dropped in str(err.value) and "best 'backbone.'" in str(err.value)


def test_load_from_and_resume_need_no_pretrained_files(tmp_path: Path) -> None:
    cfg = _config(R50, tmp_path)
    configs.drop_pretrained_inits(cfg)
    assert configs.pretrained_files(cfg) == [] and cfg.model.img_backbone.init_cfg is None
    cfg.model.img_neck.init_cfg = [
        dict(type="Xavier", layer="Conv2d"),
        dict(type="Pretrained", checkpoint=str(tmp_path / "neck.pth")),
    ]
    assert configs.pretrained_files(cfg) == [
        ("model.img_neck.init_cfg.checkpoint", str(tmp_path / "neck.pth"))
    ]
    configs.drop_pretrained_inits(cfg)
    assert cfg.model.img_neck.init_cfg == [dict(type="Xavier", layer="Conv2d")]
