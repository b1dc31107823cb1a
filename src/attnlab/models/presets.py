"""Built-in model presets. Add a line to register another."""

from .encoder import Encoder
from .gpt import GPT
from .registry import register_model

register_model("gpt", GPT, "decoder LM, family defaults (learned positions, pre-norm, GELU)")
register_model("gpt-tiny", GPT, "tiny decoder for tests", dim=64, num_layers=2, num_heads=4, max_seq_len=128)
register_model(
    "gpt-char-small", GPT, "character LM: 6 layers, 6 heads, dim 384, context 256",
    vocab_size=256, dim=384, num_layers=6, num_heads=6, max_seq_len=256,
)
register_model(
    "gpt-modern", GPT, "decoder with RoPE, RMSNorm, SwiGLU, no biases",
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, activation="silu",
)
register_model("encoder", Encoder, "BERT-style encoder, pre-norm, mean pooling")
register_model("encoder-tiny", Encoder, "tiny encoder for tests", dim=64, num_layers=2, num_heads=4, max_seq_len=128)
register_model(
    "bert", Encoder, "BERT layout: post-norm, embedding LayerNorm, segment embeddings, GELU",
    prenorm=False, embed_norm=True, type_vocab_size=2, norm_eps=1e-12, vocab_size=30522, dim=768,
    num_layers=12, num_heads=12, max_seq_len=512, pooling="cls",
)

from .vit import ViT  # noqa: E402  (vision family)

register_model("vit", ViT, "ViT-B/16 (Dosovitskiy et al. 2021): 224px, 16px patches, [CLS] pooling, pre-norm",
               dim=768, num_layers=12, num_heads=12, max_seq_len=197, image_size=224, patch_size=16, pooling="cls",
               norm_eps=1e-6)
register_model("vit-tiny", ViT, "tiny ViT for tests: 32px RGB, 4px patches (8x8 grid, no CLS), mean pooling",
               dim=64, num_layers=2, num_heads=4, max_seq_len=64, image_size=32, patch_size=4, pooling="mean",
               num_classes=10)
register_model("vit-fashion", ViT, "Fashion-MNIST ViT: 28px grayscale, 4px patches (7x7 grid), mean pooling",
               dim=128, num_layers=4, num_heads=4, max_seq_len=49, image_size=28, patch_size=4, num_channels=1,
               pooling="mean", num_classes=10)
