"""Audio family presets: AST (Gong, Chung & Glass 2021). Add a line to register another."""

from ..registry import register_model
from .ast import AST
from .ssast import SSAST

register_model("ast-tiny", AST, "tiny AST for tests: 64 frames x 32 mel bins, 8px patches with stride 6 (5 x 10 "
               "grid), class + distillation tokens", dim=32, num_layers=2, num_heads=2, mel_bins=32, frames=64,
               patch_size=8, patch_stride=[6, 6], pooling="cls", max_seq_len=52, norm_eps=1e-12, num_classes=10)
register_model("ast-small", AST, "CPU-sized AST for 1 s keywords: 98 frames x 128 mel bins, 16px patches with "
               "stride 10 (12 x 9 grid), width 192, 6 layers", dim=192, num_layers=6, num_heads=3, mel_bins=128,
               frames=98, patch_size=16, patch_stride=[10, 10], pooling="cls", max_seq_len=110, norm_eps=1e-12,
               num_classes=12)
register_model("ast-base", AST, "AST-Base (Gong et al. 2021): 1024 frames x 128 mel bins, 16px patches with stride "
               "10 (12 x 101 grid, 1214 tokens), width 768, 12 layers, AudioSet's 527 classes; 87M parameters",
               dim=768, num_layers=12, num_heads=12, mel_bins=128, frames=1024, patch_size=16, patch_stride=[10, 10],
               pooling="cls", max_seq_len=1214, norm_eps=1e-12, num_classes=527)
register_model("passt-small", AST, "PaSST-style ast-small (Koutini et al. 2022): one position per frequency row and "
               "per time column, patchout of 2 frequency rows and 3 time columns while training (10 x 6 grid)",
               dim=192, num_layers=6, num_heads=3, mel_bins=128, frames=98, patch_size=16, patch_stride=[10, 10],
               pooling="cls", max_seq_len=110, norm_eps=1e-6, num_classes=12, axis_positions=True, patchout=[2, 3, 0])
register_model("ssast-tiny", SSAST, "tiny SSAST pretraining for tests (Gong et al. 2022): ast-tiny with non-overlapping "
               "8px patches (4 x 8 grid), half of them masked", dim=32, num_layers=2, num_heads=2, mel_bins=32,
               frames=64, patch_size=8, patch_stride=[8, 8], pooling="cls", max_seq_len=34, norm_eps=1e-12,
               mask_ratio=0.5)
register_model("ssast-small", SSAST, "SSAST pretraining of ast-small's encoder: non-overlapping 16px patches (8 x 6 "
               "grid), 36 of 48 masked per clip (SSAST: 400 of 512); fine-tune with model.init_from in an ast-small "
               "with patch_stride [16, 16] and max_seq_len 50", dim=192, num_layers=6, num_heads=3, mel_bins=128,
               frames=98, patch_size=16, patch_stride=[16, 16], pooling="cls", max_seq_len=50, norm_eps=1e-12,
               mask_ratio=0.75)
register_model("ssast-frame-small", SSAST, "SSAST's frame-based pretraining (Gong et al. 2022) of ast-small's "
               "encoder with patches of every mel bin x 2 frames (a 1 x 49 grid), 37 of 49 masked per clip; fine-tune "
               "with model.init_from in ast-frame-small", dim=192, num_layers=6, num_heads=3, mel_bins=128,
               frames=98, patch_size=16, patch_shape=[128, 2], pooling="cls", max_seq_len=51, norm_eps=1e-12,
               mask_ratio=0.75)
register_model("ast-frame-small", AST, "ast-small with SSAST's frame patches (every mel bin x 2 frames, a 1 x 49 "
               "grid): the fine-tuning model of ssast-frame-small", dim=192, num_layers=6, num_heads=3, mel_bins=128,
               frames=98, patch_size=16, patch_shape=[128, 2], pooling="cls", max_seq_len=51, norm_eps=1e-12,
               num_classes=12)
