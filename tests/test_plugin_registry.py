"""The plugin's registry names: prefixed, collision-free, and the old names still load.

Another mmdet3d project (PETR, DETR3D, BEVFusion, a CMT port) may register the names the
plugin used before its prefix. The old names are fallbacks in mmengine's root registry,
registered only where free (cmt_aqr/legacy_names.py): these tests show both import
orders working and the one case mmengine refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mmdet3d.registry import HOOKS, METRICS, MODELS, TASK_UTILS, TRANSFORMS, WEIGHT_INITIALIZERS
from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope

import cmt_aqr
from cmt_aqr.legacy_names import LEGACY_NAMES, MMDET3D_REGISTRIES, alias_where_free

CONFIGS = Path(__file__).resolve().parents[1] / "plugin" / "configs"
DEMO = "cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"
REGISTRIES = {"MODELS": MODELS, "TASK_UTILS": TASK_UTILS, "TRANSFORMS": TRANSFORMS}
EXPECTED = {
    "MODELS": {
        "AqrCmtDetector",
        "AqrCmtHead",
        "AqrCmtTransformer",
        "CmtTransformerDecoder",
        "CmtCPFPN",
        "CmtVoVNet",
    },
    "TASK_UTILS": {"CmtHungarianAssigner3D", "CmtBBoxCoder"},
    "TRANSFORMS": {
        "CmtBEVFlip",
        "CmtComposeLidar2Img",
        "CmtGlobalRotScaleTrans",
        "CmtImageAug",
        "CmtModalityMask",
        "CmtUnifiedDataBaseSampler",
        "CmtUnifiedObjectSample",
    },
    "METRICS": {"CmtNuScenesMetric"},
    "HOOKS": {"CmtObjectSampleSwitchHook"},
    "WEIGHT_INITIALIZERS": {"CmtPretrainedBackbone"},
}


def _plugin_entries(registry: Registry) -> dict[str, type]:
    return {
        name: cls
        for name, cls in registry.module_dict.items()
        if getattr(cls, "__module__", "").startswith("cmt_aqr.")
    }


def test_plugin_registers_only_prefixed_names_in_mmdet3d() -> None:
    registries = {
        **REGISTRIES,
        "METRICS": METRICS,
        "HOOKS": HOOKS,
        "WEIGHT_INITIALIZERS": WEIGHT_INITIALIZERS,
    }
    for key, names in EXPECTED.items():
        entries = _plugin_entries(registries[key])
        assert set(entries) == names, key
        for name in names:
            assert entries[name] is getattr(cmt_aqr, name)
            assert name.startswith(("Cmt", "AqrCmt"))
    assert set(cmt_aqr.__all__) == set().union(*EXPECTED.values())


def test_prefixed_names_are_not_taken_by_mmdet3d_mmdet_or_mmengine() -> None:
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmdet.registry import TASK_UTILS as MMDET_TASK_UTILS
    from mmdet.registry import TRANSFORMS as MMDET_TRANSFORMS
    from mmdet.utils import register_all_modules as mmdet_register_all
    from mmdet3d.utils import register_all_modules as mmdet3d_register_all

    mmdet3d_register_all(init_default_scope=False)
    mmdet_register_all(init_default_scope=False)
    mmdet = {"MODELS": MMDET_MODELS, "TASK_UTILS": MMDET_TASK_UTILS, "TRANSFORMS": MMDET_TRANSFORMS}
    for key, registry in REGISTRIES.items():
        for name in EXPECTED[key]:
            assert name not in mmdet[key].module_dict
            assert name not in registry.parent.module_dict  # mmengine's root (and mmcv's)
            assert registry.module_dict[name].__module__.startswith("cmt_aqr.")


def test_old_names_are_fallbacks_in_the_root_registry_only() -> None:
    every_old_name = {key: list(names) for key, names in LEGACY_NAMES.items()}
    assert every_old_name == cmt_aqr.LEGACY_ALIASES  # none taken in this environment
    for key, aliases in LEGACY_NAMES.items():
        registry = MMDET3D_REGISTRIES[key]
        assert registry is REGISTRIES[key]
        for old, cls in aliases.items():
            assert old not in registry.module_dict  # mmdet3d's own names stay free
            assert registry.parent.parent is None
            assert registry.parent.module_dict[old] is cls
            assert registry.get(old) is cls
            assert cls.__name__ in EXPECTED[key]


def _swap_types(node: object, names: dict[str, str]) -> None:
    if isinstance(node, dict):
        if node.get("type") in names:
            node["type"] = names[node["type"]]
        for value in node.values():
            _swap_types(value, names)
    elif isinstance(node, list):
        for value in node:
            _swap_types(value, names)


def test_a_config_with_the_old_names_builds_the_same_model() -> None:
    """As the saved config.py of a run made before the prefix would."""
    init_default_scope("mmdet3d")
    new = Config.fromfile(str(CONFIGS / DEMO))
    old = Config.fromfile(str(CONFIGS / DEMO))
    to_old = {
        cls.__name__: name for aliases in LEGACY_NAMES.values() for name, cls in aliases.items()
    }
    model_cfg, pipeline = old.model.to_dict(), [dict(t) for t in old.train_pipeline]
    _swap_types(model_cfg, to_old)
    _swap_types(pipeline, to_old)
    assert model_cfg["type"] == "CmtDetector"
    assert model_cfg["img_neck"]["type"] == "CPFPN"
    assert model_cfg["pts_bbox_head"]["assigner"]["type"] == "HungarianAssigner3D"
    assert {t["type"] for t in pipeline} >= {"BEVFlipFusion", "ImageAugFusion", "ComposeLidar2Img"}

    torch.manual_seed(0)
    built_old = MODELS.build(model_cfg)
    built_new = MODELS.build(new.model)
    assert type(built_old) is type(built_new) is cmt_aqr.AqrCmtDetector
    shapes = {k: v.shape for k, v in built_new.state_dict().items()}
    assert {k: v.shape for k, v in built_old.state_dict().items()} == shapes
    assert type(built_old.img_neck) is cmt_aqr.CmtCPFPN
    assert type(built_old.pts_bbox_head.assigner) is cmt_aqr.CmtHungarianAssigner3D
    built_pipeline = {type(TRANSFORMS.build(t)) for t in pipeline}
    assert built_pipeline >= {
        cmt_aqr.CmtGlobalRotScaleTrans,
        cmt_aqr.CmtBEVFlip,
        cmt_aqr.CmtImageAug,
        cmt_aqr.CmtComposeLidar2Img,
    }
    assert type(TRANSFORMS.build(dict(type="ModalityMask"))) is cmt_aqr.CmtModalityMask
    vov = MODELS.build(dict(type="VoVNet", spec_name="V-39-eSE"))
    assert type(vov) is cmt_aqr.CmtVoVNet


@pytest.fixture
def other_project() -> Iterator[dict[str, type]]:
    """Registers the old names in mmdet3d's registries as another project would on import
    (after cmt_aqr, which this process imported already); unregisters them afterwards."""
    added: list[tuple[Registry, str]] = []
    classes: dict[str, type] = {}
    try:
        for key, aliases in LEGACY_NAMES.items():
            registry = MMDET3D_REGISTRIES[key]
            for old in aliases:
                cls = type(old, (), {"__init__": lambda self, **kwargs: None})
                registry.register_module()(cls)  # the decorator, as a project's class would
                added.append((registry, old))
                classes[old] = cls
        yield classes
    finally:
        for registry, old in added:
            registry.module_dict.pop(old, None)


def test_another_project_imported_after_the_plugin_keeps_its_names(
    other_project: dict[str, type],
) -> None:
    init_default_scope("mmdet3d")
    for key, aliases in LEGACY_NAMES.items():
        registry = MMDET3D_REGISTRIES[key]
        for old, ours in aliases.items():
            assert registry.get(old) is other_project[old]
            assert type(registry.build(dict(type=old))) is other_project[old]
            assert registry.get(ours.__name__) is ours  # the prefixed name still ours


def test_old_names_fall_back_to_the_plugin_again_without_the_other_project() -> None:
    for key, aliases in LEGACY_NAMES.items():
        for old, ours in aliases.items():
            assert MMDET3D_REGISTRIES[key].get(old) is ours


def _fake_tree(scope: str) -> tuple[Registry, Registry]:
    """A root like mmengine's and a child like mmdet3d's, isolated from the real ones."""
    root = Registry("model", scope=f"{scope}_engine")
    return root, Registry("model", parent=root, scope=scope)


class Ours:
    pass


class Theirs:
    pass


def test_a_project_imported_before_the_plugin_keeps_its_names() -> None:
    root, child = _fake_tree("before3d")
    child.register_module(name="VoVNet", module=Theirs)  # e.g. a project in mmdet3d's registry
    root.register_module(name="CPFPN", module=Theirs)  # e.g. something in mmengine's root
    registered = alias_where_free(child, {"VoVNet": Ours, "CPFPN": Ours, "ModalityMask": Ours})
    assert registered == ["ModalityMask"]
    assert child.get("VoVNet") is Theirs
    assert child.get("CPFPN") is Theirs
    assert child.get("ModalityMask") is Ours
    assert "ModalityMask" not in child.module_dict
    assert alias_where_free(child, {"ModalityMask": Ours}) == []  # idempotent


def test_a_project_imported_after_the_plugin_keeps_its_names() -> None:
    root, child = _fake_tree("after3d")
    assert alias_where_free(child, {"VoVNet": Ours}) == ["VoVNet"]
    child.register_module(name="VoVNet", module=Theirs)  # no KeyError
    assert child.get("VoVNet") is Theirs
    assert root.get("VoVNet") is Ours


def test_known_limit_a_later_registration_in_the_root_itself_fails() -> None:
    """mmengine refuses a duplicate within one registry (without force=True). Projects
    register in their library's registry (mmdet3d's, mmdet's), not in mmengine's root."""
    root, child = _fake_tree("root3d")
    alias_where_free(child, {"VoVNet": Ours})
    with pytest.raises(KeyError, match="VoVNet is already registered"):
        root.register_module(name="VoVNet", module=Theirs)
