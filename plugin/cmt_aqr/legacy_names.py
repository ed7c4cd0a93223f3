"""Registry names the plugin used before its project prefix, kept loadable for old configs.

Configs written before the prefix (the saved ``config.py`` of earlier runs) name
``VoVNet``, ``CPFPN``, ``HungarianAssigner3D``, ``CmtHead``, ... Those names are
common: PETR, DETR3D, BEVFusion and the mmdet3d 1.x ports of CMT register them too.
So an old name is only a fallback, and it never takes a name from another project:

- it is registered in the *root* registry of mmengine above mmdet3d's (``MODELS``,
  ``TASK_UTILS``, ``TRANSFORMS``), never in mmdet3d's own. A lookup from mmdet3d
  searches mmdet3d's registry first and its parents after, so a project that owns the
  name (in mmdet3d's registry) always wins, and registering it there later does not
  fail: mmengine refuses a duplicate only within one registry.
- it is registered only when the name is free, in mmdet3d's registry and in the root,
  when ``cmt_aqr`` is imported. A project imported earlier keeps its name.

Import order, for another project that registers an old name in mmdet3d's registries
(all of the above do):

- that project first, then ``cmt_aqr``: no alias; the old name builds that project's class;
- ``cmt_aqr`` first, then that project: both import; the old name builds that project's
  class from then on.

Either way a config needs the prefixed name to get this plugin's class when another
project owns the old one. The one case that fails: a project that registers an old name
directly in mmengine's root registry after ``cmt_aqr`` (mmengine raises KeyError, as for
any duplicate); no OpenMMLab 3D project registers there.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmdet3d.registry import MODELS, TASK_UTILS, TRANSFORMS
from mmengine.registry import Registry

from cmt_aqr.assigner import CmtHungarianAssigner3D
from cmt_aqr.detector import AqrCmtDetector
from cmt_aqr.head import AqrCmtHead
from cmt_aqr.necks import CmtCPFPN
from cmt_aqr.transformer import AqrCmtTransformer
from cmt_aqr.transforms import (
    CmtBEVFlip,
    CmtComposeLidar2Img,
    CmtGlobalRotScaleTrans,
    CmtImageAug,
    CmtModalityMask,
)
from cmt_aqr.vovnet import CmtVoVNet

# old registry name -> the class it names now, per mmdet3d registry
LEGACY_NAMES: dict[str, dict[str, type]] = {
    "MODELS": {
        "CmtDetector": AqrCmtDetector,
        "CmtHead": AqrCmtHead,
        "CmtTransformer": AqrCmtTransformer,
        "CPFPN": CmtCPFPN,
        "VoVNet": CmtVoVNet,
    },
    "TASK_UTILS": {"HungarianAssigner3D": CmtHungarianAssigner3D},
    "TRANSFORMS": {
        "BEVFlipFusion": CmtBEVFlip,
        "ComposeLidar2Img": CmtComposeLidar2Img,
        "GlobalRotScaleTransFusion": CmtGlobalRotScaleTrans,
        "ImageAugFusion": CmtImageAug,
        "ModalityMask": CmtModalityMask,
    },
}
MMDET3D_REGISTRIES: dict[str, Registry] = {
    "MODELS": MODELS,
    "TASK_UTILS": TASK_UTILS,
    "TRANSFORMS": TRANSFORMS,
}


def _lineage(registry: Registry) -> list[Registry]:
    """The registry, its parent, ..., the root."""
    chain = [registry]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return chain


def alias_where_free(registry: Registry, aliases: Mapping[str, type]) -> list[str]:
    """Registers each alias in the root above `registry` when no registry from `registry`
    up to the root has that name yet; returns the names registered."""
    lineage = _lineage(registry)
    root = lineage[-1]
    registered = []
    for name, cls in aliases.items():
        if any(name in reg.module_dict for reg in lineage):
            continue
        root.register_module(name=name, module=cls)
        registered.append(name)
    return registered


def register_legacy_names() -> dict[str, list[str]]:
    """The old names that were free, registered as fallbacks (per mmdet3d registry)."""
    return {
        key: alias_where_free(MMDET3D_REGISTRIES[key], aliases)
        for key, aliases in LEGACY_NAMES.items()
    }
