"""CMT (Cross Modal Transformer) + AQR for mmdet3d 1.4.

Importing this package registers every module below in mmdet3d's registries;
configs load it with ``custom_imports = dict(imports=['cmt_aqr'])``. Every
registered name starts with ``Cmt`` so that it cannot collide with the modules of
other mmdet3d projects (PETR, BEVFusion, ... register their own ``CPFPN``,
``VoVNet``, ``HungarianAssigner3D``).
"""

from cmt_aqr.assigner import CmtHungarianAssigner3D
from cmt_aqr.box_coder import CmtBBoxCoder
from cmt_aqr.detector import CmtDetector
from cmt_aqr.head import CmtHead
from cmt_aqr.metric import CmtNuScenesMetric
from cmt_aqr.necks import CmtCPFPN
from cmt_aqr.transformer import CmtTransformer, CmtTransformerDecoder
from cmt_aqr.transforms import (
    CmtBEVFlip,
    CmtComposeLidar2Img,
    CmtGlobalRotScaleTrans,
    CmtImageAug,
    CmtModalityMask,
)
from cmt_aqr.vovnet import CmtVoVNet

__all__ = [
    "CmtBBoxCoder",
    "CmtBEVFlip",
    "CmtCPFPN",
    "CmtComposeLidar2Img",
    "CmtDetector",
    "CmtGlobalRotScaleTrans",
    "CmtHead",
    "CmtHungarianAssigner3D",
    "CmtImageAug",
    "CmtModalityMask",
    "CmtNuScenesMetric",
    "CmtTransformer",
    "CmtTransformerDecoder",
    "CmtVoVNet",
]
