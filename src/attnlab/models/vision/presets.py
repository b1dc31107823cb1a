"""Vision family presets: plain ViT (Dosovitskiy et al. 2021) and Swin (Liu et al. 2021). Add a line to register
another."""

from ..registry import register_model
from .convit import ConViT
from .swin import Swin
from .vit import ViT

register_model("vit", ViT, "ViT-B/16 (Dosovitskiy et al. 2021): 224px, 16px patches, [CLS] pooling, pre-norm",
               dim=768, num_layers=12, num_heads=12, max_seq_len=197, image_size=224, patch_size=16, pooling="cls",
               norm_eps=1e-6)
register_model("vit-tiny", ViT, "tiny ViT for tests: 32px RGB, 4px patches (8x8 grid, no CLS), mean pooling",
               dim=64, num_layers=2, num_heads=4, max_seq_len=64, image_size=32, patch_size=4, pooling="mean",
               num_classes=10)
register_model("vit-fashion", ViT, "Fashion-MNIST ViT: 28px grayscale, 4px patches (7x7 grid), mean pooling",
               dim=128, num_layers=4, num_heads=4, max_seq_len=49, image_size=28, patch_size=4, num_channels=1,
               pooling="mean", num_classes=10)
register_model("vit-digits", ViT, "8x8 digits ViT: 1 channel, 2px patches (4x4 grid), mean pooling; trains in a minute",
               dim=64, num_layers=3, num_heads=4, max_seq_len=16, image_size=8, patch_size=2, num_channels=1,
               pooling="mean", num_classes=10, position="learned")

# Swin (Liu et al. 2021): hierarchical, window attention with shifted windows in odd blocks of each stage
register_model("swin-tiny", Swin, "tiny Swin for tests: 32px RGB, 2px patches, stages 16x16 and 8x8, window 4",
               dim=16, depths=[2, 2], stage_heads=[2, 4], window_size=4, image_size=32, patch_size=2,
               attention="window", num_classes=10, max_seq_len=256)
register_model("swin-fashion", Swin, "CPU-sized Swin for 28px grayscale: 2px patches, stages 14, 7, 4, window 7",
               dim=48, depths=[2, 2, 2], stage_heads=[3, 6, 12], window_size=7, image_size=28, patch_size=2,
               num_channels=1, attention="window", num_classes=10, drop_path=0.1, max_seq_len=196)
register_model("swin-t", Swin, "Swin-T (Liu et al. 2021): 224px, 4px patches, depths 2-2-6-2, heads 3-6-12-24, "
               "width 96, window 7, drop path 0.2; 28M parameters",
               dim=96, depths=[2, 2, 6, 2], stage_heads=[3, 6, 12, 24], window_size=7, image_size=224, patch_size=4,
               attention="window", num_classes=1000, drop_path=0.2, max_seq_len=3136)

# ConViT (d'Ascoli et al. 2021): GPSA blocks on the patch grid, then the class token joins for softmax blocks
register_model("convit-tiny", ConViT, "tiny ConViT for tests: 32px RGB, 4px patches (8x8 grid), 2 GPSA + 2 SA blocks",
               dim=48, num_heads=4, num_layers=4, local_layers=2, attention=["gpsa", "gpsa", "softmax", "softmax"],
               image_size=32, patch_size=4, max_seq_len=65, num_classes=10, pooling="cls", norm_eps=1e-6)
register_model("convit-ti", ConViT, "ConViT-Ti (d'Ascoli et al. 2021): 224px, 16px patches, width 192, 4 heads, "
               "10 GPSA + 2 SA blocks (q/k/v carry biases here; the reference has none)",
               dim=192, num_heads=4, num_layers=12, local_layers=10, attention=["gpsa"] * 10 + ["softmax"] * 2,
               image_size=224, patch_size=16, max_seq_len=197, num_classes=1000, pooling="cls", norm_eps=1e-6)
