"""CMT (Cross Modal Transformer) + AQR for mmdet3d 1.4.

Importing this package registers every module below in mmdet3d's registries;
configs load it with ``custom_imports = dict(imports=['cmt_aqr'])``.
"""

from cmt_aqr.assigner import HungarianAssigner3D
from cmt_aqr.box_coder import CmtBBoxCoder
from cmt_aqr.detector import CmtDetector
from cmt_aqr.head import CmtHead
from cmt_aqr.necks import CPFPN
from cmt_aqr.transformer import CmtTransformerDecoder
from cmt_aqr.transforms import (
    BEVFlipFusion,
    ComposeLidar2Img,
    GlobalRotScaleTransFusion,
    ImageAugFusion,
    ModalityMask,
)
from cmt_aqr.vovnet import VoVNet

__all__ = [
    "CPFPN",
    "BEVFlipFusion",
    "CmtBBoxCoder",
    "CmtDetector",
    "CmtHead",
    "CmtTransformerDecoder",
    "ComposeLidar2Img",
    "GlobalRotScaleTransFusion",
    "HungarianAssigner3D",
    "ImageAugFusion",
    "ModalityMask",
    "VoVNet",
]
