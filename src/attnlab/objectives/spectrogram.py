"""SSAST's masked spectrogram patch modelling as a training objective (``objective.name: ssast``; Gong, Lai, Chung &
Glass 2022): the model (an :class:`~attnlab.models.audio.SSAST` preset) masks clusters of patches, predicts them
from the encoder's output and returns the joint discriminative + generative loss."""

from __future__ import annotations

from torch import Tensor, nn


def ssast_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """SSAST's masked spectrogram patch modelling (Gong et al. 2022): the joint discriminative + generative loss.

    ``batch["spectrogram"] (B, frames, mel_bins)`` -> ``(loss, {"loss", "discriminative_loss", "generative_loss",
    "pretext_accuracy", "examples"})``.

    Raises:
        ValueError: a batch without spectrograms, or a model that is not a masked spectrogram pretrainer.
    """
    if "spectrogram" not in batch:
        raise ValueError(f"objective ssast pretrains on spectrograms (a keywords or audio_folder dataset); the batch "
                         f"holds {sorted(batch)}")
    if not getattr(model, "spectrogram_pretrainer", False):
        raise ValueError(f"objective ssast trains an SSAST preset (ssast-tiny, ssast-small), not a {type(model).__name__}")
    spec = batch["spectrogram"]
    loss, metrics = model(spec)
    return loss, {**metrics, "examples": spec.new_tensor(spec.shape[0])}
