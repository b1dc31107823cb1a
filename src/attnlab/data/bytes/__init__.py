"""Bytes modality (ByteFormer, Horton et al. 2023): files classified from their raw bytes, here the types of the
machine's own files (:mod:`.files`). Spoken keywords as WAV file bytes are audio data:
:mod:`attnlab.data.audio.wav_files` (``keyword_bytes``)."""

from ..base import as_bytes
from ..registry import register_dataset
from .files import make_file_types

__all__ = ["as_bytes", "make_file_types"]

register_dataset("file_types", make_file_types, "this system's files (PNG, gzip, Python, JSON, ...) by type, from "
                 "their first bytes", "accuracy", "classify")
