"""Bytes family presets: ByteFormer (Horton et al. 2023). Add a line to register another."""

from ..registry import register_model
from .byteformer import ByteFormer

MERGES_12 = [0, 1, 3, 5, 7, 9]  # ByteFormer's downsample flags [T, T, F, T, F, T, F, T, F, T, F, F]

register_model("byteformer-tiny", ByteFormer, "tiny ByteFormer for tests: width 32, 4 layers, byte kernel 8 (stride "
               "4), windows of 16 tokens, merging after layers 0 and 2", dim=32, num_layers=4, num_heads=2,
               patch_size=8, window_size=16, merge_after=[0, 2], max_seq_len=512, num_classes=4, norm_eps=1e-6)
register_model("byteformer-small", ByteFormer, "CPU-sized ByteFormer for short files (<= 16 KB): width 128, 6 layers, "
               "byte kernel 16, windows of 64 tokens, merging after layers 0, 1, 3", dim=128, num_layers=6,
               num_heads=4, patch_size=16, window_size=64, merge_after=[0, 1, 3], max_seq_len=2048, num_classes=10,
               norm_eps=1e-6)
register_model("byteformer-ti", ByteFormer, "BF-Ti (Horton et al. 2023): width 192, 12 layers, 3 heads, byte kernel 32 "
               "(TIFF / WAV), windows of 128 tokens shifted by 64 in odd layers, 6 token merges; 9.1M parameters (1.9M "
               "of them the 10,000-token position table)",
               dim=192, num_layers=12, num_heads=3, patch_size=32, window_size=128, merge_after=MERGES_12,
               max_seq_len=10000, num_classes=1000, norm_eps=1e-6)
