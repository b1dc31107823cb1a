"""Explanations of trained models: attention maps with their gradients (:mod:`.maps`) and ``attnlab viz`` on a run
folder (:mod:`.runs`). The tensor-level methods (rollout, attention distance, head importance, faithfulness curves)
and the figures live in :mod:`attnlab.viz`."""

from .maps import maps_with_gradients, model_maps, read_relevance, relevance, trailing_run
from .runs import explain, image_classifier, open_subject

__all__ = ["explain", "image_classifier", "maps_with_gradients", "model_maps", "open_subject", "read_relevance",
           "relevance", "trailing_run"]
