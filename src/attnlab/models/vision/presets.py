"""Vision family presets: ViT (Dosovitskiy et al. 2021), Swin (Liu et al. 2021), ConViT (d'Ascoli et al. 2021), CvT
(Wu et al. 2021), DiNAT (Hassani & Shi 2022),
T2T-ViT (Yuan et al. 2021), TNT (Han et al. 2021), SReT (Shen et al. 2022), VAN (Guo et al. 2022) and UniFormer
(Li et al. 2023). Add a line to register another."""

from ..registry import register_model
from .convit import ConViT
from .cvt import CvT
from .dinat import DiNAT
from .sret import SReT
from .swin import Swin
from .t2t import T2TViT
from .tnt import TNT
from .uniformer import UniFormer
from .van import VAN
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
register_model("convit-fashion", ConViT, "CPU-sized ConViT for 28px grayscale: 4px patches (7x7 grid), width 128, 4 "
               "heads, 2 GPSA + 2 SA blocks", dim=128, num_heads=4, num_layers=4, local_layers=2,
               attention=["gpsa", "gpsa", "softmax", "softmax"], image_size=28, patch_size=4, num_channels=1,
               max_seq_len=50, num_classes=10, pooling="cls", norm_eps=1e-6)
register_model("convit-ti", ConViT, "ConViT-Ti (d'Ascoli et al. 2021): 224px, 16px patches, width 192, 4 heads, "
               "10 GPSA + 2 SA blocks (q/k/v carry biases here; the reference has none)",
               dim=192, num_heads=4, num_layers=12, local_layers=10, attention=["gpsa"] * 10 + ["softmax"] * 2,
               image_size=224, patch_size=16, max_seq_len=197, num_classes=1000, pooling="cls", norm_eps=1e-6)

# CvT (Wu et al. 2021): convolutional token embeddings and q/k/v projections, strided keys, no position embedding
register_model("cvt-tiny", CvT, "tiny CvT for tests: 32px RGB, stages 16x16 (width 16) and 8x8 (width 32), mean pooling",
               stage_dims=[16, 32], depths=[1, 1], stage_heads=[1, 2], stage_embed=[[3, 2, 1], [3, 2, 1]],
               image_size=32, num_classes=10, max_seq_len=256)
register_model("cvt-fashion", CvT, "CPU-sized CvT for 28px grayscale: stages 14x14, 7x7, 4x4 of widths 32, 64, 128, "
               "strided keys, mean pooling",
               stage_dims=[32, 64, 128], depths=[1, 2, 2], stage_heads=[1, 2, 4],
               stage_embed=[[3, 2, 1], [3, 2, 1], [3, 2, 1]], image_size=28, num_channels=1, num_classes=10,
               drop_path=0.1, max_seq_len=196)
register_model("cvt-13", CvT, "CvT-13 (Wu et al. 2021): 224px, widths 64-192-384, depths 1-2-10, heads 1-3-6, class "
               "token in the last stage; 20M parameters", stage_dims=[64, 192, 384], depths=[1, 2, 10],
               stage_heads=[1, 3, 6], stage_embed=[[7, 4, 2], [3, 2, 1], [3, 2, 1]], image_size=224, num_classes=1000,
               pooling="cls", drop_path=0.1, max_seq_len=3136)

# DiNAT (Hassani & Shi 2022): convolutional tokenizer and downsampler, neighbourhood attention alternating with
# dilated neighbourhood attention (window_size = the neighbourhood kernel size)
register_model("dinat-tiny", DiNAT, "tiny DiNAT for tests: 32px RGB, stages 8x8 and 4x4, 3x3 neighbourhoods "
               "(dilation 2 in odd blocks of stage 0)", dim=16, depths=[2, 2], stage_heads=[2, 4], window_size=3,
               image_size=32, attention="neighborhood", num_classes=10, max_seq_len=64)
register_model("dinat-fashion", DiNAT, "CPU-sized DiNAT for 28px grayscale: stages 7x7 and 4x4 of widths 64 and 128, "
               "3x3 neighbourhoods, dilation 2 in odd blocks of stage 0", dim=64, depths=[2, 4], stage_heads=[2, 4],
               window_size=3, image_size=28, num_channels=1, attention="neighborhood", mlp_dim=192, num_classes=10,
               drop_path=0.1, max_seq_len=49)
register_model("dinat-mini", DiNAT, "DiNAT-Mini (Hassani & Shi 2022): 224px, width 64, depths 3-4-6-5, heads 2-4-8-16, "
               "7x7 neighbourhoods with dilations 8-4-2-1 and relative position bias, MLP ratio 3, drop path 0.2; "
               "20M parameters",
               dim=64, depths=[3, 4, 6, 5], stage_heads=[2, 4, 8, 16], window_size=7, image_size=224,
               attention="neighborhood", mlp_dim=192, num_classes=1000, drop_path=0.2, max_seq_len=3136)

# T2T-ViT (Yuan et al. 2021): soft splits and re-structurisation layers, then a deep-narrow ViT with a class token
register_model("t2t-vit-tiny", T2TViT, "tiny T2T-ViT for tests: 32px RGB, soft splits 8x8 -> 4x4, token width 16, "
               "2 layers of width 32", dim=32, num_layers=2, num_heads=2, token_dim=16, image_size=32,
               stage_embed=[[3, 4, 1], [3, 2, 1]], pooling="cls", position="sinusoidal", num_classes=10,
               max_seq_len=17, mlp_dim=64)
register_model("t2t-vit-fashion", T2TViT, "CPU-sized T2T-ViT for 28px grayscale: soft splits 14x14 -> 7x7, token width "
               "32, 6 layers of width 128, mean pooling", dim=128, num_layers=6, num_heads=4, token_dim=32,
               image_size=28, num_channels=1, stage_embed=[[3, 2, 1], [3, 2, 1]], pooling="mean",
               position="sinusoidal", num_classes=10, max_seq_len=49, mlp_dim=256)
register_model("t2t-vit-7", T2TViT, "T2T-ViT-7 (Yuan et al. 2021): 224px, soft splits 56-28-14, token width 64, 7 "
               "layers of width 256, 4 heads, MLP ratio 2, class token; 4.3M parameters", dim=256, num_layers=7,
               num_heads=4, token_dim=64, image_size=224, stage_embed=[[7, 4, 2], [3, 2, 1], [3, 2, 1]],
               pooling="cls", position="sinusoidal", num_classes=1000, max_seq_len=197, mlp_dim=512)

# TNT (Han et al. 2021): inner blocks over the words of each patch, outer blocks over the patches
register_model("tnt-tiny", TNT, "tiny TNT for tests: 32px RGB, 8px patches (4x4 grid) of 2x2 words of width 8, "
               "2 blocks of width 32", dim=32, num_layers=2, num_heads=2, token_dim=8, inner_heads=2, inner_stride=4,
               image_size=32, patch_size=8, pooling="cls", num_classes=10, max_seq_len=17)
register_model("tnt-fashion", TNT, "CPU-sized TNT for 28px grayscale: 4px patches (7x7 grid) of 2x2 words of width 16, "
               "4 blocks of width 128, mean pooling", dim=128, num_layers=4, num_heads=4, token_dim=16, inner_heads=2,
               inner_stride=2, image_size=28, patch_size=4, num_channels=1, pooling="mean", num_classes=10,
               max_seq_len=49)
register_model("tnt-s", TNT, "TNT-S (Han et al. 2021): 224px, 16px patches of 4x4 words of width 24 (4 heads), 12 "
               "blocks of width 384 (6 heads), class token; 23.8M parameters", dim=384, num_layers=12, num_heads=6,
               token_dim=24, inner_heads=4, inner_stride=4, image_size=224, patch_size=16, pooling="cls",
               num_classes=1000, max_seq_len=197)

# SReT (Shen et al. 2022): shared blocks applied twice, NLL blocks, sliced group attention; wide vs deep
register_model("sret-tiny", SReT, "tiny SReT for tests: 32px RGB, stem to 8x8, stages 8x8 and 4x4 of widths 16 and 32, "
               "2 applications per shared block", dim=16, depths=[2, 2], stage_heads=[2, 4], groups=[2, 1],
               recursive_groups=[2, 1], stage_embed=[[3, 2, 1], [3, 2, 1]], image_size=32, num_classes=10,
               max_seq_len=64, mlp_dim=64)
register_model("sret-fashion-deep", SReT, "deep-narrow SReT for 28px grayscale: stem to 14x14, stages 14, 7, 4 of widths "
               "32-64-128, depths 4-4-2 (2 applications per shared block), sliced 2-1-1", dim=32, depths=[4, 4, 2],
               stage_heads=[1, 2, 4], groups=[2, 1, 1], recursive_groups=[2, 1, 1], stage_embed=[[3, 1, 1], [3, 2, 1]],
               image_size=28, num_channels=1, num_classes=10, max_seq_len=196, mlp_dim=96)
register_model("sret-fashion-wide", SReT, "wide-shallow SReT for 28px grayscale: stem to 14x14, one shared block per "
               "stage looped twice, widths 64-128-256", dim=64, depths=[2, 2, 2], stage_heads=[2, 4, 8],
               groups=[2, 1, 1], recursive_groups=[2, 1, 1], stage_embed=[[3, 1, 1], [3, 2, 1]], image_size=28,
               num_channels=1, num_classes=10, max_seq_len=196, mlp_dim=192)
register_model("sret-t", SReT, "SReT-T (Shen et al. 2022): 224px, stem to 28x28, widths 64-128-256, heads 2-4-8, "
               "depths 4-10-6 (10 shared blocks), groups 8-4-1 / 2-1-1, MLP ratio 3.6; 4.8M parameters", dim=64,
               depths=[4, 10, 6], stage_heads=[2, 4, 8], groups=[8, 4, 1], recursive_groups=[2, 1, 1],
               stage_embed=[[3, 2, 1], [3, 2, 1], [3, 2, 1]], image_size=224, num_classes=1000, max_seq_len=784,
               mlp_dim=230, np_mlp_ratio=1.0)

# VAN (Guo et al. 2022): convolutional stages whose token mixer is a grid attention module (LKA by default; psa, ulsam,
# atconv with grid_attention=...)
register_model("van-tiny", VAN, "tiny VAN for tests: 32px RGB, stages 16x16 and 8x8 of widths 16 and 32, LKA",
               stage_dims=[16, 32], depths=[1, 1], stage_embed=[[3, 2, 1], [3, 2, 1]], image_size=32, num_classes=10,
               layer_scale=1e-2, norm_eps=1e-6)
register_model("van-fashion", VAN, "CPU-sized VAN for 28px grayscale: stages 14, 7, 4 of widths 32-64-128, depths "
               "2-2-2, MLP ratios 8-8-4, LKA (grid_attention= psa, ulsam or atconv for the other modules)",
               stage_dims=[32, 64, 128], depths=[2, 2, 2], stage_embed=[[3, 2, 1], [3, 2, 1], [3, 2, 1]],
               stage_mlp_ratios=[8, 8, 4], image_size=28, num_channels=1, num_classes=10, layer_scale=1e-2,
               drop_path=0.1, norm_eps=1e-6)
register_model("van-b0", VAN, "VAN-B0 (Guo et al. 2022): 224px, widths 32-64-160-256, depths 3-3-5-2, MLP ratios "
               "8-8-4-4, LKA, layer scale 1e-2; 4.1M parameters", stage_dims=[32, 64, 160, 256], depths=[3, 3, 5, 2],
               stage_mlp_ratios=[8, 8, 4, 4], image_size=224, num_classes=1000, layer_scale=1e-2, drop_path=0.1,
               norm_eps=1e-6)

# UniFormer (Li et al. 2023): local 5x5 relation aggregators in the first stages, any attention kernel in the others
register_model("uniformer-tiny", UniFormer, "tiny UniFormer for tests: 32px RGB, a local stage 8x8 (width 16) and a "
               "global stage 4x4 (width 32, 2 heads)", stage_dims=[16, 32], depths=[1, 1], stage_heads=[1, 2],
               local_stages=1, image_size=32, num_classes=10, norm_eps=1e-6, max_seq_len=16)
register_model("uniformer-fashion", UniFormer, "CPU-sized UniFormer for 28px grayscale: a local stage 14x14 (width 32), "
               "global stages 7x7 and 4x4 (widths 64 and 128, head width 32)", stage_dims=[32, 64, 128],
               depths=[2, 2, 2], stage_heads=[1, 2, 4], local_stages=1, stage_embed=[[2, 2, 0], [2, 2, 0], [3, 2, 1]],
               image_size=28, num_channels=1, num_classes=10, drop_path=0.1, norm_eps=1e-6, max_seq_len=49)
register_model("uniformer-s", UniFormer, "UniFormer-S (Li et al. 2023): 224px, widths 64-128-320-512, depths 3-4-8-3, "
               "local stages 1-2, head width 64, drop path 0.1; 22M parameters", stage_dims=[64, 128, 320, 512],
               depths=[3, 4, 8, 3], stage_heads=[1, 2, 5, 8], local_stages=2, image_size=224, num_classes=1000,
               drop_path=0.1, norm_eps=1e-6, max_seq_len=196)
