"""Encoder-decoder presets. Add a line to register another."""

from ..registry import register_model
from .model import EncoderDecoder

register_model("seq2seq-tiny", EncoderDecoder, "tiny encoder-decoder for tests: 2 + 2 layers, dim 64",
               dim=64, num_layers=2, num_heads=4, max_seq_len=64, vocab_size=32)
register_model("seq2seq-small", EncoderDecoder, "CPU-sized encoder-decoder: 4 + 4 layers, dim 256, 4 heads",
               dim=256, num_layers=4, num_heads=4, max_seq_len=256)
register_model("transformer-base", EncoderDecoder,
               "the original Transformer base (Vaswani et al. 2017): 6 + 6 post-norm layers, dim 512, 8 heads, "
               "MLP 2048, ReLU, sinusoidal positions",
               dim=512, num_layers=6, num_heads=8, mlp_dim=2048, activation="relu", prenorm=False,
               position="sinusoidal", max_seq_len=512, vocab_size=37000, dropout=0.1)
register_model("t5-small", EncoderDecoder,
               "T5-small (Raffel et al. 2020): 6 + 6 pre-norm RMSNorm layers, dim 512, 8 heads of 64, MLP 2048 ReLU, "
               "relative position buckets (32, max distance 128), unscaled attention scores, tied embeddings with "
               "logits scaled by dim ** -0.5; 60.5M parameters",
               vocab_size=32128, dim=512, num_layers=6, num_heads=8, head_dim=64, mlp_dim=2048, activation="relu",
               norm="rmsnorm", norm_eps=1e-6, bias=False, position="relative", attention_options={"scale": 1.0},
               cross_attention_options={"scale": 1.0}, logit_scale=512 ** -0.5, max_seq_len=512)
register_model("bart-base", EncoderDecoder,
               "BART-base (Lewis et al. 2020): 6 + 6 post-norm layers, dim 768, 12 heads, MLP 3072 GELU, learned "
               "positions with an embedding LayerNorm per stack, shared token table, logits bias; 139M parameters",
               vocab_size=50265, dim=768, num_layers=6, num_heads=12, mlp_dim=3072, activation="gelu", prenorm=False,
               position="learned", embed_norm=True, decoder_embeddings=True, logits_bias=True, max_seq_len=1024)
