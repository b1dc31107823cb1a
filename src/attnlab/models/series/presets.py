"""Series family presets: PatchTST (Nie et al. 2023), iTransformer (Liu et al. 2024), TimeXer (Wang et
al. 2024), Autoformer (Wu et al. 2021), DLinear and NLinear (Zeng et
al. 2023). The series shape (lookback, horizon, variates, exogenous) comes from the data when `attnlab train` builds
them. Add a line to register another."""

from ..registry import register_model
from .autoformer import Autoformer
from .irregular import IrregularClassifier
from .itransformer import ITransformer
from .linear import DLinear, NLinear
from .patchtst import PatchTST
from .pretrain import PatchTSTPretrain
from .timexer import TimeXer

_POST = dict(prenorm=False, vocab_size=1, tie_weights=False)  # post-norm blocks; no token vocabulary

register_model("patchtst-tiny", PatchTST, "tiny PatchTST for tests: dim 16, 1 layer, 2 heads, patches 8 / stride 4",
               dim=16, num_layers=1, num_heads=2, mlp_dim=32, patch_size=8, patch_stride=4, max_seq_len=128, **_POST)
register_model("patchtst-small", PatchTST, "CPU PatchTST: dim 64, 2 layers, 4 heads, MLP 128, patches 16 / stride 8, "
               "dropout 0.2", dim=64, num_layers=2, num_heads=4, mlp_dim=128, patch_size=16, patch_stride=8,
               dropout=0.2, max_seq_len=128, **_POST)
register_model("patchtst", PatchTST, "PatchTST/42 official ETTh1 sizes: dim 16, 3 layers, 4 heads, MLP 128, dropout "
               "0.3, patches 16 / stride 8 (use data.lookback=336)", dim=16, num_layers=3, num_heads=4, mlp_dim=128,
               patch_size=16, patch_stride=8, dropout=0.3, max_seq_len=128, **_POST)
register_model("patchtst-pretrain-tiny", PatchTSTPretrain, "tiny masked-patch pretraining PatchTST for tests: "
               "dim 16, 1 layer, non-overlapping patches of 8", dim=16, num_layers=1, num_heads=2, mlp_dim=32,
               patch_size=8, patch_stride=8, max_seq_len=128, **_POST)
register_model("patchtst-pretrain-small", PatchTSTPretrain, "masked-patch pretraining (Nie et al. 2023) of a "
               "patchtst-small body on non-overlapping patches of 12 (fine-tune with patch_size=12 patch_stride=12)",
               dim=64, num_layers=2, num_heads=4, mlp_dim=128, patch_size=12, patch_stride=12, dropout=0.2,
               max_seq_len=128, **_POST)
register_model("itransformer-tiny", ITransformer, "tiny iTransformer for tests: dim 32, 1 layer, 2 heads",
               dim=32, num_layers=1, num_heads=2, mlp_dim=64, position="none", max_seq_len=64, **_POST)
register_model("itransformer-small", ITransformer, "CPU iTransformer: dim 128, 2 layers, 8 heads, MLP 128 "
               "(Time-Series-Library ETTh2 sizes)", dim=128, num_layers=2, num_heads=8, mlp_dim=128,
               position="none", dropout=0.1, max_seq_len=512, **_POST)
register_model("timexer-tiny", TimeXer, "tiny TimeXer for tests: dim 16, 1 layer, 2 heads, patches of 8",
               dim=16, num_layers=1, num_heads=2, mlp_dim=32, patch_size=8, **_POST)
register_model("timexer-small", TimeXer, "CPU TimeXer: dim 64, 2 layers, 4 heads, MLP 128, patches of 16 (lookback a "
               "multiple of 16)", dim=64, num_layers=2, num_heads=4, mlp_dim=128, patch_size=16, dropout=0.1, **_POST)
register_model("autoformer-tiny", Autoformer, "tiny Autoformer for tests: dim 16, 1+1 layers, 2 heads, "
               "auto-correlation", dim=16, num_layers=1, num_decoder_layers=1, num_heads=2, mlp_dim=32,
               attention="autocorrelation", revin=False, **_POST)
register_model("autoformer-small", Autoformer, "CPU Autoformer: dim 64, 2+1 layers, 4 heads, MLP 128, auto-correlation "
               "(factor 3), moving average 25", dim=64, num_layers=2, num_decoder_layers=1, num_heads=4, mlp_dim=128,
               attention="autocorrelation", dropout=0.05, revin=False, **_POST)
register_model("dlinear", DLinear, "DLinear (Zeng et al. 2023): moving-average decomposition + two linear maps",
               num_layers=1, **_POST)
register_model("nlinear", NLinear, "NLinear (Zeng et al. 2023): one linear map of the window minus its last value",
               num_layers=1, **_POST)

# classification of irregularly sampled multi-channel series (attnlab.data.series.irregular: 3 channels, 3 classes)
register_model("irregular-tiny", IrregularClassifier, "irregular-series classifier for tests: dim 32, 2 layers, 4 heads, "
               "3 channels, 3 classes", dim=32, num_layers=2, num_heads=4, mlp_dim=64, num_variates=3, num_classes=3,
               position="none", **_POST)
register_model("irregular-small", IrregularClassifier, "irregular-series classifier: dim 64, 3 layers, 4 heads "
               "(set num_variates and num_classes)", dim=64, num_layers=3, num_heads=4, mlp_dim=128, num_variates=3,
               num_classes=3, position="none", dropout=0.1, **_POST)
