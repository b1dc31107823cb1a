"""Audio modality: WAV files (:mod:`.wav`: reading without torchaudio, resampling, writing PCM and mu-law), the
Kaldi-compatible log-mel filterbank front end with SpecAugment masking (:mod:`.fbank`), speech synthesised by
espeak-ng (:mod:`.speech`) and the keyword datasets built on it (:mod:`.keywords`; as WAV file bytes for
ByteFormer: :mod:`.wav_files`)."""

from ..registry import register_dataset
from .fbank import fbank, num_frames, spec_augment
from .keywords import make_audio_folder, make_keywords
from .wav import read_wav, read_wav_bytes, resample, wav_bytes
from .wav_files import make_keyword_bytes

__all__ = ["fbank", "make_audio_folder", "make_keyword_bytes", "make_keywords", "num_frames", "read_wav", "read_wav_bytes", "resample",
           "spec_augment", "wav_bytes"]

register_dataset("keywords", make_keywords, "spoken words (espeak-ng voices; test: held-out voices or real asterisk "
                 "digits) as log-mel spectrograms", "accuracy", "classify", source="espeak")
register_dataset("audio_folder", make_audio_folder, "your WAV files: data.options.path with one sub-folder per class, "
                 "as log-mel spectrograms", "accuracy", "classify")
register_dataset("keyword_bytes", make_keyword_bytes, "the keywords' clips as WAV file bytes (8 kHz mu-law; ByteFormer)",
                 "accuracy", "classify", source="espeak")
