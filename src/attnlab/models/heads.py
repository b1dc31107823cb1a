"""Heads around a Transformer body, so every family trains on the classification and regression datasets
of the comparison suite.

- :class:`SequenceClassifier`: mean-pooled hidden states -> linear -> class logits (ListOps, Nangia & Bowman
  2018, and pixel-sequence classification as in Long Range Arena, Tay et al. 2021).
- :class:`ImageClassifier`: an image body's pooled representation -> linear -> class logits (ViT family).
- :class:`InContextRegressor`: real-valued tokens -> linear read-in -> body -> scalar read-out per position
  (in-context linear regression, Garg et al. 2022, "What can Transformers learn in-context?").

Both take an already built :class:`~attnlab.models.transformer.TransformerBody` (a GPT from the base recipe,
or an Encoder) and drop the heads the body brought with it (GPT ``head``, Encoder ``mlm_head`` /
``classifier``), so ``parameters()`` counts exactly what the dataset needs. :func:`wrap_for_dataset` picks the
head from a dataset's ``kind``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .pooling import pool
from .transformer import Embeddings, TransformerBody

BODY_HEADS = ("head", "mlm_head", "classifier")  # output heads of the families; unused under these heads


def _strip_heads(body: nn.Module) -> TransformerBody:
    if not isinstance(body, TransformerBody):
        raise TypeError(f"a classification/regression head needs a TransformerBody model (GPT, Encoder), "
                        f"got {type(body).__name__}")
    for name in BODY_HEADS:
        if name in body._modules:
            del body._modules[name]  # unregistered: no parameters, not in the state dict
    return body


class SequenceClassifier(nn.Module):
    """``ids (B, T)`` -> logits ``(B, num_classes)``: body, mean pool over real tokens, dropout, linear.

    Causal body (GPT): inputs must be **right-padded** (real tokens first); a real token then never
    attends to padding, so the padding mask is not passed to the attention (any kernel works) and is used
    only to pool. Bidirectional body (Encoder): the mask is passed to the attention, and every kernel must
    support ``key_padding_mask`` (checked at build when ``padded``).

    Args:
        body: a built GPT or Encoder; its output head is removed.
        num_classes: labels.
        grid: ``(rows, cols)`` passed to the attention when the tokens are a row-major 2-D grid (pixels).
        padded: the inputs carry padding (a ``key_padding_mask``).

    Raises:
        CapabilityError: a bidirectional body whose kernel cannot take a padding mask, at build.
        ValueError: ``num_classes < 1``; at call, a causal body given left- or inner-padded inputs.
    """

    def __init__(self, body: TransformerBody, num_classes: int, grid: tuple[int, int] | None = None,
                 padded: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.body = _strip_heads(body)
        self.causal, self.grid = bool(body.causal), grid
        if padded and not self.causal:
            for block in body.blocks:
                block.attn.kernel.capabilities.require(block.attn.kernel.name, key_padding_mask=True)
        self.dropout = nn.Dropout(body.cfg.dropout)
        self.head = nn.Linear(body.cfg.dim, num_classes)
        nn.init.normal_(self.head.weight, std=body.cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if self.causal:
            if key_padding_mask is not None and bool((key_padding_mask[:, 1:] & ~key_padding_mask[:, :-1]).any()):
                raise ValueError("SequenceClassifier on a causal body needs right-padded inputs (a real token after "
                                 "a pad would attend to it); right-pad the sequences or use an encoder body")
            hidden = self.body.encode(ids, grid=self.grid)  # (B, T, D); pads come last, nobody attends to them
        else:
            hidden = self.body.encode(ids, key_padding_mask=key_padding_mask, grid=self.grid)  # (B, T, D)
        return self.head(self.dropout(pool(hidden, key_padding_mask, "mean")))  # (B, C)


class ImageClassifier(nn.Module):
    """``pixels (B, C, H, W)`` -> logits ``(B, num_classes)``: an image body (ViT family), its pooled
    representation (``pooling``: [CLS] or mean over patches), dropout, linear.

    Raises:
        ValueError: ``num_classes < 1``; a body that does not read images, or reads another image shape than
            ``image_shape`` (the message names the model settings to change).
    """

    def __init__(self, body: nn.Module, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not hasattr(body, "pooled"):
            raise ValueError(f"an image dataset needs an image model (a vit preset, `attnlab list models`), not a "
                             f"{type(body).__name__}")
        cfg = body.cfg
        if (cfg.num_channels, cfg.image_size, cfg.image_size) != tuple(image_shape):
            C, H, W = image_shape
            fits = [p for p in range(1, H + 1) if H % p == 0 and W % p == 0 and p < H]
            raise ValueError(f"the dataset's images are {C}x{H}x{W} but the model reads {cfg.num_channels}x"
                             f"{cfg.image_size}x{cfg.image_size}: set model.image_size={H} model.num_channels={C}"
                             + (f" (and model.patch_size one of {fits})" if H % cfg.patch_size else ""))
        if "head" in body._modules:
            del body._modules["head"]  # the family's own head (ViT, Swin): unused under this one
        self.body = body
        self.causal = False
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(getattr(body, "width", cfg.dim), num_classes)  # Swin: the last stage's width
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.head(self.dropout(self.body.pooled(pixels)))  # (B, C)


def check_spectrogram_shape(cfg, shape: tuple[int, int]) -> None:
    """Raises ``ValueError`` naming the settings when a spectrogram model's ``(frames, mel_bins)`` are not ``shape``."""
    if (cfg.frames, cfg.mel_bins) != tuple(shape):
        frames, bins = shape
        raise ValueError(f"the dataset's spectrograms are {frames} frames x {bins} mel bins but the model reads "
                         f"{cfg.frames} x {cfg.mel_bins}: set model.frames={frames} model.mel_bins={bins} (and "
                         "max_seq_len to the token count the error then names), or the dataset's options")


class PooledClassifier(nn.Module):
    """Spectrograms ``(B, frames, bins)`` (an audio body: AST) or file bytes ``(B, L)`` (a bytes body: ByteFormer) ->
    logits ``(B, num_classes)``: the body's pooled representation, dropout, linear (the family's own head is
    replaced, as :class:`ImageClassifier` does for images).

    Raises:
        ValueError: ``num_classes < 1``; a body of another family than the dataset's (names the presets that fit),
            a spectrogram model whose frames / mel bins differ from the dataset's, a bytes model whose positions do
            not cover the dataset's longest file (each names the setting to change).
    """

    def __init__(self, body: nn.Module, num_classes: int, dataset):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg, audio = body.cfg, dataset.audio_shape is not None
        if getattr(body, "reads", None) != ("spectrogram" if audio else "bytes"):
            wanted = "a spectrogram model (ast-*, passt-*)" if audio else "a bytes model (byteformer-*)"
            raise ValueError(f"dataset {dataset.name!r} needs {wanted}, not a {type(body).__name__}; "
                             "`attnlab list models` lists them")
        if audio:
            check_spectrogram_shape(cfg, dataset.audio_shape)
        if not audio:
            tokens = body.tokens_of(dataset.byte_length)
            if tokens > cfg.max_seq_len:
                raise ValueError(f"the dataset's files are up to {dataset.byte_length} bytes = {tokens} tokens but "
                                 f"model.max_seq_len={cfg.max_seq_len}; set model.max_seq_len={tokens}, or shorter files "
                                 "(file_types: max_bytes; keyword_bytes: seconds, sample_rate)")
        if "head" in body._modules:
            del body._modules["head"]
        self.body, self.causal = body, False
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, num_classes)
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.body.pooled(x)))  # (B, C)


class VectorEmbeddings(nn.Module):
    """Real-valued tokens ``(B, T, input_dim)`` -> ``(B, T, D)``: linear read-in plus the body's absolute
    position embedding, embedding norm and dropout (the parts of :class:`Embeddings` that are not tokens)."""

    def __init__(self, input_dim: int, embed: Embeddings, dim: int):
        super().__init__()
        self.read_in = nn.Linear(input_dim, dim)
        self.pos_emb, self.embed_norm, self.dropout = embed.pos_emb, embed.embed_norm, embed.dropout

    def forward(self, inputs: Tensor, positions: Tensor) -> Tensor:
        x = self.read_in(inputs.to(self.read_in.weight.dtype))  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x)


class InContextRegressor(nn.Module):
    """``inputs (B, T, input_dim)`` float -> predictions ``(B, T)`` (Garg et al. 2022's read-in / read-out).

    The body's token embedding is replaced by :class:`VectorEmbeddings` (its position embedding is kept,
    RoPE/ALiBi work through the attention as usual) and its output head by a scalar linear read-out.

    Raises:
        TypeError: the body does not embed tokens with :class:`Embeddings` (e.g. ViT patches).
        CapabilityError: a kernel whose stack hook needs token embeddings (its message names it): there
            are no tokens here.
        ValueError: ``input_dim < 1``; at call, inputs that are not ``(B, T, input_dim)``.
    """

    def __init__(self, body: TransformerBody, input_dim: int):
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        body = _strip_heads(body)
        if not isinstance(body.embed, Embeddings):
            raise TypeError(f"InContextRegressor needs a token-embedding body (GPT, Encoder), got embeddings "
                            f"{type(body.embed).__name__}")
        vectors = VectorEmbeddings(input_dim, body.embed, body.cfg.dim)  # the token table is dropped
        for hook in body.stack_hooks:  # kernels whose stack state needs token embeddings refuse here
            hook.check_embedding(vectors)
        self.input_dim, self.causal = input_dim, bool(body.causal)
        body.embed = vectors
        self.body = body
        self.read_out = nn.Linear(body.cfg.dim, 1)
        nn.init.normal_(self.read_out.weight, std=body.cfg.init_std)
        nn.init.zeros_(self.read_out.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (batch, tokens, {self.input_dim}), got {tuple(inputs.shape)}")
        positions = self.body.default_positions(inputs, 0)  # (T,); raises beyond max_seq_len
        x = self.body.embed(inputs, positions)  # (B, T, D)
        hidden = self.body.encode(None, inputs_embeds=x, positions=positions)  # (B, T, D)
        return self.read_out(hidden).squeeze(-1)  # (B, T)


def wrap_for_dataset(body: TransformerBody, dataset) -> nn.Module:
    """``body`` under the head a :class:`~attnlab.data.base.SuiteDataset` of ``kind`` classify or regression needs.

    Raises:
        ValueError: an ``lm`` dataset (train the body itself), or interleaved in-context regression on a
            bidirectional body (it would read ``y_i``, the token after ``x_i``).
        CapabilityError: the body's kernel cannot run the dataset (see the heads).
    """
    if dataset.kind == "classify" and getattr(dataset, "image_shape", None) is not None:
        return ImageClassifier(body, dataset.num_classes, dataset.image_shape)
    if dataset.kind == "classify" and (getattr(dataset, "audio_shape", None) or getattr(dataset, "byte_length", None)):
        return PooledClassifier(body, dataset.num_classes, dataset)
    if hasattr(body, "pooled"):
        raise ValueError(f"dataset {dataset.name!r} holds tokens, not images, audio or files: a {type(body).__name__} "
                         "cannot read it; "
                         "use a gpt or encoder preset, or an image dataset (fashion_images, digits, image_folder)")
    if dataset.kind == "classify":
        return SequenceClassifier(body, dataset.num_classes, grid=dataset.grid,
                                  padded=dataset.train.key_padding_mask is not None)
    if dataset.kind == "regression":
        if not body.causal and dataset.options.get("format", "interleaved") == "interleaved":
            raise ValueError(f"dataset {dataset.name!r} (interleaved x_i, y_i tokens) needs a causal body: a "
                             "bidirectional one reads each answer y_i next to x_i; use a gpt preset or the option "
                             "format=concat")
        return InContextRegressor(body, dataset.input_dim)
    raise ValueError(f"dataset {dataset.name!r} is of kind {dataset.kind!r}; only classify and regression datasets "
                     "take a head")


__all__ = ["ImageClassifier", "InContextRegressor", "PooledClassifier", "SequenceClassifier", "VectorEmbeddings",
           "check_spectrogram_shape", "wrap_for_dataset"]
