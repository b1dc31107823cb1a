"""Audio modality: the Kaldi-compatible log-mel filterbank front end (:mod:`.fbank`)."""

from .fbank import fbank, num_frames

__all__ = ["fbank", "num_frames"]
