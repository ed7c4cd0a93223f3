"""CMT (Cross Modal Transformer) + AQR for mmdet3d 1.4.

Importing this package registers every module below in mmdet3d's registries;
configs load it with ``custom_imports = dict(imports=['cmt_aqr'])``. Every
registered name carries a prefix, ``Cmt`` or, where the CMT ports for mmdet3d 1.x
use the ``Cmt`` name themselves (detector, head, transformer), ``AqrCmt``: the
modules of other mmdet3d projects (PETR, DETR3D, BEVFusion, CMT, ...) keep their
``CPFPN``, ``VoVNet``, ``HungarianAssigner3D``, ``CmtHead``. The names used before
the prefix stay loadable where no other project has taken them
(``cmt_aqr.legacy_names``; ``LEGACY_ALIASES`` says which this process registered).
"""

from cmt_aqr.assigner import CmtHungarianAssigner3D
from cmt_aqr.box_coder import CmtBBoxCoder
from cmt_aqr.detector import AqrCmtDetector
from cmt_aqr.gt_sampling_switch import CmtObjectSampleSwitchHook
from cmt_aqr.head import AqrCmtHead
from cmt_aqr.legacy_names import register_legacy_names
from cmt_aqr.metric import CmtNuScenesMetric
from cmt_aqr.necks import CmtCPFPN
from cmt_aqr.object_sample import CmtUnifiedDataBaseSampler, CmtUnifiedObjectSample
from cmt_aqr.pretrained import CmtPretrainedBackbone
from cmt_aqr.transformer import AqrCmtTransformer, CmtTransformerDecoder
from cmt_aqr.transforms import (
    CmtBEVFlip,
    CmtComposeLidar2Img,
    CmtGlobalRotScaleTrans,
    CmtImageAug,
    CmtModalityMask,
)
from cmt_aqr.vovnet import CmtVoVNet

LEGACY_ALIASES = register_legacy_names()

__all__ = [
    "AqrCmtDetector",
    "AqrCmtHead",
    "AqrCmtTransformer",
    "CmtBBoxCoder",
    "CmtBEVFlip",
    "CmtCPFPN",
    "CmtComposeLidar2Img",
    "CmtGlobalRotScaleTrans",
    "CmtHungarianAssigner3D",
    "CmtImageAug",
    "CmtModalityMask",
    "CmtNuScenesMetric",
    "CmtObjectSampleSwitchHook",
    "CmtPretrainedBackbone",
    "CmtTransformerDecoder",
    "CmtUnifiedDataBaseSampler",
    "CmtUnifiedObjectSample",
    "CmtVoVNet",
]
