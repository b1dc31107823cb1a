"""Typed, validated model configuration shared by every model family (unknown keys are errors with a did-you-mean hint)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..attention.registry import attention_options, list_attention, unknown_attention_message


class ModelConfig(BaseModel):
    """Everything that shapes a Transformer. Unknown keys and wrong types are errors.

    ``attention`` is a registry name, or a list with one name per layer (a per-layer schedule);
    ``attention_options`` is a dict, or a list of dicts aligned with that schedule. A staged model (``depths``)
    also takes one entry per stage, each a name (every block of the stage) or a list with one name per block of
    that stage; the schedule is stored expanded to one entry per block.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    vocab_size: int = Field(256, ge=1, description="token vocabulary size")
    dim: int = Field(256, ge=1, description="model width")
    num_layers: int = Field(4, ge=1, description="Transformer blocks")
    num_heads: int = Field(4, ge=1, description="query heads")
    num_kv_heads: int | None = Field(None, ge=1, description="K/V heads (GQA); None = num_heads, 1 = MQA")
    head_dim: int | None = Field(None, ge=1, description="per-head width; None = dim // num_heads")
    mlp_dim: int | None = Field(None, ge=1, description="MLP hidden width; None = 4 * dim")
    max_seq_len: int = Field(256, ge=1, description="longest input the model accepts")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="residual and embedding dropout")
    attention: str | list[str] = Field("softmax", description="attention kernel name, or one per layer (staged "
                                                            "models: or one per stage)")
    attention_options: dict | list[dict] = Field(default_factory=dict, description="kernel options (a list: aligned "
                                                                                   "with the attention schedule)")
    position: Literal["learned", "sinusoidal", "rope", "alibi", "relative", "none"] = "learned"
    rope_base: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    prenorm: bool = Field(True, description="pre-norm blocks (GPT-2) vs post-norm (BERT)")
    mlp: Literal["mlp", "swiglu", "geglu"] = "mlp"
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    bias: bool = Field(True, description="biases in projections and MLPs")
    tie_weights: bool = Field(True, description="share token embedding and output head weights")
    type_vocab_size: int = Field(0, ge=0, description="segment embeddings (BERT); 0 = none")
    embed_norm: bool = Field(False, description="LayerNorm after the embeddings (BERT)")
    num_classes: int = Field(0, ge=0, description="classification head size (encoder); 0 = no head")
    pooling: Literal["mean", "cls"] = "mean"
    image_size: int = Field(224, ge=1, description="square input image side in pixels (ViT)")
    patch_size: int = Field(16, ge=1, description="square patch side in pixels (ViT)")
    num_channels: int = Field(3, ge=1, description="image channels (ViT)")
    init_std: float = 0.02
    num_decoder_layers: int | None = Field(
        None, ge=1, description="decoder blocks of an encoder-decoder; None = num_layers (an attention list then "
                                "schedules the decoder's self-attention too, so the two must match)")
    cross_attention: str = Field("softmax", description="kernel of an encoder-decoder's cross-attention")
    cross_attention_options: dict = Field(default_factory=dict, description="options of the cross-attention kernel")
    depths: list[int] = Field(default_factory=list, description="blocks per stage of a hierarchical vision model "
                                                                "(Swin); num_layers is then their sum")
    stage_heads: list[int] = Field(default_factory=list, description="attention heads per stage (Swin); the width "
                                                                     "doubles at every stage, starting at dim; "
                                                                     "empty = one head per stage")
    stage_dims: list[int] = Field(default_factory=list, description="width of every stage (CvT); empty = the width "
                                                                    "doubles at every stage, starting at dim (Swin)")
    stage_embed: list[list[int]] = Field(default_factory=list, description="[kernel, stride, padding] of each "
                                         "stage's convolutional token embedding (CvT), or T2T-ViT's soft splits")
    token_dim: int = Field(64, ge=1, description="T2T-ViT: width of the tokens-to-token layers; TNT: word width")
    token_attention: str = Field("softmax", description="T2T-ViT: kernel of the tokens-to-token layers; TNT: of the "
                                                        "inner (word) blocks")
    inner_heads: int = Field(4, ge=1, description="TNT: heads of the inner (word) blocks")
    inner_stride: int = Field(4, ge=1, description="TNT: stride of the per-patch word convolution (16px patches, "
                                                   "stride 4: 4x4 words)")
    token_attention_options: dict = Field(default_factory=dict, description="options of token_attention")
    loops: int = Field(2, ge=1, description="SReT: applications of each shared block in a row (depths count "
                                            "applications)")
    groups: list[int] = Field(default_factory=list, description="SReT: attention slices per stage, first application")
    recursive_groups: list[int] = Field(default_factory=list, description="SReT: attention slices per stage in the "
                                                                          "recursive (shuffled) applications")
    np_mlp_ratio: float = Field(1.0, gt=0.0, description="SReT: hidden width of the NLL blocks, a ratio of the width")
    permute_in_eval: bool = Field(False, description="SReT: shuffle before slicing in eval too (the reference does)")
    kv_stride: int = Field(2, ge=1, description="CvT: stride of the key/value convolutional projections (1 = "
                                                "self-attention on the grid, where grid kernels serve)")
    window_size: int = Field(7, ge=1, description="window side of Swin's window attention (clamped to small grids)")
    drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth: the last block's drop rate, "
                                                              "rising linearly from 0 (Swin)")
    relative_buckets: int = Field(32, ge=2, description="position 'relative' (T5): buckets of the relative bias")
    relative_max_distance: int = Field(128, ge=1, description="position 'relative' (T5): distance of the last bucket")
    decoder_embeddings: bool = Field(False, description="encoder-decoder: the decoder has its own position table "
                                                         "and embedding norm, sharing the token table (BART)")
    logits_bias: bool = Field(False, description="encoder-decoder: a bias on the output logits (BART's "
                                                 "final_logits_bias)")
    logit_scale: float = Field(1.0, gt=0.0, description="multiplies the final hidden states before the output head "
                                                        "(T5 with tied embeddings: dim ** -0.5)")
    local_layers: int = Field(0, ge=0, description="ConViT: blocks on the patch grid alone before the class token "
                                                   "joins")
    mel_bins: int = Field(128, ge=1, description="AST: mel bins of the input spectrogram (its frequency axis)")
    frames: int = Field(1024, ge=1, description="AST: frames of the input spectrogram (its time axis)")
    patch_shape: list[int] = Field(default_factory=list, description="AST/SSAST: [frequency, time] patch size when "
                                   "patches are not square (SSAST's frame patches: [128, 2]); empty = patch_size "
                                   "in both")
    patch_stride: int | list[int] | None = Field(None, description="stride between patches: series (PatchTST) steps, "
                                                 "None = patch_size // 2; AST [frequency, time] or one int for both "
                                                 "(AST: [10, 10], overlapping), None = patch_size (no overlap)")
    merge_after: list[int] = Field(default_factory=list, description="ByteFormer: layers after which consecutive "
                                   "token pairs merge (the sequence halves)")
    axis_positions: bool = Field(False, description="AST: one learned position per frequency row plus one per time "
                                                    "column (PaSST) instead of one per patch")
    patchout: list[int] = Field(default_factory=list, description="AST: [frequency rows, time columns, random "
                                "patches] dropped while training (PaSST's structured and unstructured patchout)")
    local_stages: int = Field(0, ge=0, description="UniFormer: leading stages with the local (5x5 depth-wise) "
                                                   "relation aggregator instead of attention")
    stage_mlp_ratios: list[float] = Field(default_factory=list, description="MLP hidden width per stage, a ratio of "
                                          "the stage width (VAN, UniFormer); empty = 4 everywhere")
    layer_scale: float = Field(0.0, ge=0.0, description="initial per-channel scale of each residual branch (VAN "
                                                        "1e-2, CaiT-style); 0 = none")
    grid_attention: str | list[str] = Field("lka", description="VAN-style models: the grid attention module of "
                                            "every stage (one name, or one per stage): lka, psa, ulsam, atconv")
    grid_attention_options: dict = Field(default_factory=dict, description="options of the grid attention module")
    stage_modules: list[str] = Field(default_factory=list, description="Swin, DiNAT, UniFormer: a grid attention "
                                     "module added residually after each stage's blocks, one name per stage ('' = "
                                     "none); grid_attention_options then apply to these modules")
    lookback: int | None = Field(None, ge=1, description="series: look-back window in steps; None = data.lookback")
    horizon: int | None = Field(None, ge=1, description="series: steps forecast; None = data.horizon")
    num_variates: int | None = Field(None, ge=1, description="series: target columns forecast; None = from the data")
    num_exogenous: int | None = Field(None, ge=0, description="series: exogenous input columns; None = from the data")
    future_exog: bool = Field(False, description="series (TimeXer): exogenous values over the horizon are known in "
                              "advance (calendar, weather forecasts, schedules) and read with the look-back's")
    revin: bool = Field(True, description="series: instance normalisation of every input window (RevIN, Kim et al. "
                                          "2022), undone on the forecast")
    revin_affine: bool = Field(False, description="series: learnable per-variate scale and shift inside RevIN")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="series: dropout on the flatten head (PatchTST)")
    mask_ratio: float = Field(0.4, gt=0.0, lt=1.0, description="series (PatchTST pretraining): share of patches "
                                                               "masked per window and variate; audio (SSAST): per clip")
    moving_avg: int = Field(25, ge=1, description="series: moving-average kernel of the trend (DLinear, Autoformer); "
                                                  "odd")

    @model_validator(mode="before")
    @classmethod
    def _stages(cls, data):
        """A staged model's ``num_layers`` is ``sum(depths)`` and its first ``num_heads`` the first stage's."""
        if isinstance(data, dict) and data.get("depths"):
            if not all(isinstance(d, int) and d >= 1 for d in data["depths"]):
                raise ValueError(f"depths must be positive ints, got {data['depths']}")
            heads = data.get("stage_heads") or [1] * len(data["depths"])  # VAN's stages have no heads
            if len(heads) != len(data["depths"]):
                raise ValueError(f"stage_heads needs one head count per stage: depths={data['depths']} but "
                                 f"stage_heads={heads}")
            data = {**data, "num_layers": sum(data["depths"]), "num_heads": heads[0], "stage_heads": heads}
            dims, embed = data.get("stage_dims") or [], data.get("stage_embed") or []
            if dims and len(dims) != len(data["depths"]):
                raise ValueError(f"stage_dims needs one width per stage: depths={data['depths']} but stage_dims={dims}")
            if any(not isinstance(e, (list, tuple)) or len(e) != 3 for e in embed):
                raise ValueError(f"stage_embed lists [kernel, stride, padding] triples (CvT: one per stage, T2T-ViT: "
                                 f"the soft splits, SReT: the stem), got {embed}")
            if dims:
                data["dim"] = dims[0]
            data = _per_stage(_per_stage(data, "attention"), "attention_options")
        return data

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads dividing dim or set head_dim"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={kv}; valid num_kv_heads: "
                f"{[g for g in range(1, self.num_heads + 1) if self.num_heads % g == 0]}"
            )
        valid = set(list_attention())
        names = self.attention if isinstance(self.attention, list) else [self.attention]
        for n in names:
            if n not in valid:
                raise ValueError(unknown_attention_message(n))
        if isinstance(self.attention, list) and len(self.attention) != self.num_layers:
            raise ValueError(
                f"attention schedule has {len(self.attention)} entries but num_layers={self.num_layers}"
            )
        if isinstance(self.attention_options, list) and len(self.attention_options) != self.num_layers:
            raise ValueError(
                f"attention_options list has {len(self.attention_options)} entries but num_layers={self.num_layers}"
            )
        for field in ("cross_attention", "token_attention"):
            if getattr(self, field) not in valid:
                raise ValueError(f"{field}: " + unknown_attention_message(getattr(self, field)))
        self._check_grid_attention()
        if self.patch_shape and (len(self.patch_shape) != 2 or min(self.patch_shape) < 1):
            raise ValueError(f"patch_shape is [frequency, time], both >= 1 (e.g. [128, 2]); got {self.patch_shape}")
        strides = [self.patch_stride] if isinstance(self.patch_stride, int) else self.patch_stride or []
        if any(st < 1 for st in strides):
            raise ValueError(f"patch_stride must be >= 1, got {self.patch_stride}")
        listed = isinstance(self.attention, list) or isinstance(self.attention_options, list)
        if listed and self.num_decoder_layers not in (None, self.num_layers):
            raise ValueError(f"a per-layer attention schedule serves the encoder and the decoder alike: "
                             f"num_decoder_layers={self.num_decoder_layers} must equal num_layers={self.num_layers} "
                             "(or give one kernel name)")
        for i in range(self.num_layers):
            name, opts = self.layer_attention(i)
            unknown = sorted(set(opts) - set(attention_options(name)))
            if unknown:
                raise ValueError(
                    f"attention {name!r} has no option(s) {unknown}; valid: {sorted(attention_options(name))}"
                )
        return self

    def _check_grid_attention(self) -> None:
        from ..attention.grid import grid_attention_options

        names = self.grid_attention if isinstance(self.grid_attention, list) else [self.grid_attention]
        if isinstance(self.grid_attention, list) and len(names) != len(self.depths):
            raise ValueError(f"grid_attention lists one module per stage: {len(names)} names for "
                             f"{len(self.depths)} stages (depths={self.depths})")
        if self.stage_modules:
            if len(self.stage_modules) != len(self.depths):
                raise ValueError(f"stage_modules lists one grid attention module per stage ('' for none): "
                                 f"{len(self.stage_modules)} entries for {len(self.depths)} stages")
            names = [n for n in self.stage_modules if n]
            for name in names:
                grid_attention_options(name)  # an unknown name: did-you-mean and the valid names
        for name in names:
            unknown = sorted(set(self.grid_attention_options) - set(grid_attention_options(name)))
            if unknown:
                raise ValueError(f"grid attention {name!r} has no option(s) {unknown}; valid: "
                                 f"{sorted(grid_attention_options(name))}")
        if self.stage_mlp_ratios and len(self.stage_mlp_ratios) != len(self.depths):
            raise ValueError(f"stage_mlp_ratios needs one ratio per stage: depths={self.depths} but "
                             f"stage_mlp_ratios={self.stage_mlp_ratios}")

    def stage_grid_attention(self, stage: int) -> str:
        """The grid attention module of ``stage``."""
        return self.grid_attention[stage] if isinstance(self.grid_attention, list) else self.grid_attention

    def stage_mlp_ratio(self, stage: int) -> float:
        """MLP hidden width of ``stage`` as a ratio of its width (4 unless ``stage_mlp_ratios`` says)."""
        return self.stage_mlp_ratios[stage] if self.stage_mlp_ratios else 4.0

    def layer_attention(self, i: int) -> tuple[str, dict]:
        """(kernel name, options) of layer ``i`` under the per-layer schedule."""
        name = self.attention[i] if isinstance(self.attention, list) else self.attention
        opts = self.attention_options[i] if isinstance(self.attention_options, list) else self.attention_options
        return name, dict(opts)

    @property
    def resolved_mlp_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.dim


def _per_stage(data: dict, key: str) -> dict:
    """``data`` with a per-stage ``attention`` / ``attention_options`` list expanded to one entry per block.

    A list of ``sum(depths)`` plain entries is already per block. Raises ValueError for any other length, naming
    both accepted ones."""
    value, depths = data.get(key), data["depths"]
    if not isinstance(value, list) or (len(value) == sum(depths) and not any(isinstance(v, list) for v in value)):
        return data
    if len(value) != len(depths):
        raise ValueError(f"{key} has {len(value)} entries; give one per block ({sum(depths)}: depths={depths}) or "
                         f"one per stage ({len(depths)})")
    flat = []
    for i, (entry, depth) in enumerate(zip(value, depths)):
        if isinstance(entry, list) and len(entry) != depth:
            raise ValueError(f"{key}: stage {i} has {depth} blocks (depths={depths}) but its list has "
                             f"{len(entry)} entries")
        flat += list(entry) if isinstance(entry, list) else [entry] * depth
    return {**data, key: flat}
