"""Text family presets: GPT decoders and BERT-style encoders. Add a line to register another."""

from ..registry import register_model
from .encoder import Encoder
from .gpt import GPT

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
