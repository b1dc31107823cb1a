"""Deep self-attention distillation (MiniLM, Wang et al. 2020; MiniLMv2, Wang et al. 2021) of a pretrained encoder
into a smaller, faster or sparser student: ``attnlab distill RECIPE.yaml`` (:func:`distill`), losses as plain
functions (:mod:`.losses`), the export that sentence-transformers loads (:mod:`.export`) and the built-in evaluation
(:mod:`.evaluate`)."""

from .config import DistillConfig, load_distill_config
from .losses import attention_transfer_loss, embedding_mse, relation_loss, row_kl, value_relation_loss
from .run import DistillResult, distill, evaluate_folder

__all__ = ["DistillConfig", "DistillResult", "attention_transfer_loss", "distill", "embedding_mse",
           "evaluate_folder", "load_distill_config", "relation_loss", "row_kl", "value_relation_loss"]
