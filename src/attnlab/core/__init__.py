"""The bottom layer: small helpers every other package may use, importing nothing else from attnlab.

- :mod:`.registry`: :class:`Registry`, entries by name with one did-you-mean error format.
- :mod:`.io`: atomic file writers (text, bytes, JSON, a copy, or any writer given a temporary path), and
  :func:`writable_folder`, a folder path checked before anything is written to it.
- :mod:`.yamlfile`: :func:`load_yaml`, a YAML mapping from a file with one-line errors.
"""

from .io import (copy_file, default_file_mode, file_in_the_way, writable_folder, write_bytes, write_json, write_text,
                 write_with)
from .registry import Registry
from .yamlfile import load_yaml

__all__ = ["Registry", "copy_file", "default_file_mode", "file_in_the_way", "load_yaml", "writable_folder",
           "write_bytes", "write_json", "write_text", "write_with"]
