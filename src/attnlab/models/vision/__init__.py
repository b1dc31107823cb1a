"""Vision family: ViT (patch embedding + the shared Transformer body), Swin (hierarchical, window attention), ConViT
(GPSA on the patch grid, then the class token), CvT (convolutional token embeddings and projections), DiNAT
(neighbourhood and dilated neighbourhood attention on a Swin-style hierarchy), T2T-ViT (tokens-to-token
embedding, deep-narrow backbone) and TNT (inner blocks over the words of each patch, outer blocks over patches)
SReT (shared blocks applied recursively, sliced group attention), VAN (grid attention modules such as
large-kernel attention in convolutional stages) and UniFormer (local convolutional aggregators, then attention)."""

from . import presets  # noqa: F401  (registers the vision presets)
from .convit import ConViT
from .cvt import CvT
from .dinat import DiNAT
from .sret import SReT
from .swin import Swin
from .t2t import T2TViT
from .tnt import TNT
from .uniformer import UniFormer
from .van import VAN
from .vit import ViT

__all__ = ["ConViT", "CvT", "DiNAT", "SReT", "Swin", "T2TViT", "TNT", "UniFormer", "VAN", "ViT"]
