"""Audio modality: WAV files (:mod:`.wav`: reading without torchaudio, resampling) and the Kaldi-compatible log-mel
filterbank front end with SpecAugment masking (:mod:`.fbank`)."""

from .fbank import fbank, num_frames, spec_augment
from .wav import read_wav, resample

__all__ = ["fbank", "num_frames", "read_wav", "resample", "spec_augment"]
