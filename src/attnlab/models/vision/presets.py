"""Vision family presets: plain ViT (Dosovitskiy et al. 2021). Add a line to register another."""

from ..registry import register_model
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
