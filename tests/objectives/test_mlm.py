"""Masked language modelling: BERT's masking statistics, whole-word masking, and an encoder that learns."""

from __future__ import annotations

import pytest
import torch

from attnlab.data.text import build_lm_data
from attnlab.models import create_model
from attnlab.objectives.mlm import IGNORE_INDEX, mask_tokens, mlm_step

V, MASK, CLS, PAD = 100, 99, 0, 1


def sample(B=400, T=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, MASK, (B, T), generator=g)
    ids[:, 0] = CLS
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[::2, 100:] = False
    ids[~kpm] = PAD
    return ids, kpm


def test_bert_masking_statistics_on_a_large_sample():
    ids, kpm = sample()
    inputs, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, key_padding_mask=kpm, special_ids=(CLS, PAD),
                                 generator=torch.Generator().manual_seed(1))
    picked = labels != IGNORE_INDEX
    candidates = kpm & (ids != CLS)
    assert abs(picked.sum() / candidates.sum() - 0.15) < 0.005
    masked = (inputs == MASK) & picked
    kept = (inputs == ids) & picked
    replaced = picked & ~masked & ~kept
    n = picked.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01 and abs(replaced.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.012  # 10% kept, plus random draws that hit a special id
    assert not picked[~candidates].any()  # [CLS] and padding are never picked
    torch.testing.assert_close(labels[picked], ids[picked])
    assert torch.equal(inputs[~picked], ids[~picked])
    assert not (inputs[replaced] == CLS).any() and not (inputs[replaced] == PAD).any()


def test_masking_is_seeded():
    ids, kpm = sample(B=4)
    a = mask_tokens(ids, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_whole_word_masking_picks_every_piece_of_a_word():
    ids, _ = sample(B=200, T=60)
    word_ids = torch.arange(60).div(3, rounding_mode="floor").expand(200, -1)  # words of three pieces
    _, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, word_ids=word_ids, special_ids=(CLS,),
                            generator=torch.Generator().manual_seed(2))
    picked = (labels != IGNORE_INDEX).view(200, 20, 3)
    whole = picked[:, 1:]  # word 0 holds [CLS], which is never picked
    assert torch.equal(whole.all(-1), whole.any(-1))  # a word is picked entirely or not at all
    assert abs(whole.all(-1).float().mean() - 0.15) < 0.02


@pytest.mark.parametrize("kwargs, message", [
    (dict(prob=0.0), "masking probability"),
    (dict(mask_id=V), "outside the vocabulary"),
])
def test_bad_masking_arguments(kwargs, message):
    ids, _ = sample(B=2)
    with pytest.raises(ValueError, match=message):
        mask_tokens(ids, **{"mask_id": MASK, "vocab_size": V, **kwargs})
    with pytest.raises(TypeError, match="masked-LM head"):
        mlm_step(create_model("gpt-tiny"), {"idx": ids, "labels": ids})


def test_encoder_learns_masked_characters_of_the_bible():
    """Masked accuracy rises well above the unigram baseline (always the most frequent character)."""
    data = build_lm_data("kjv", "char", seq_len=64)
    vocab = data.tokenizer.vocab_size + 1  # + [MASK]
    mask_id = vocab - 1
    torch.manual_seed(0)
    # RoPE: relative positions from the first step (learned absolute positions take far longer to find the
    # neighbours a masked character is predicted from)
    model = create_model("encoder-tiny", vocab_size=vocab, dim=64, num_layers=2, max_seq_len=64, position="rope")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    train = torch.from_numpy(data.train.astype("int64"))

    def batch(tokens, n):
        starts = torch.randint(0, len(tokens) - 65, (n,), generator=g)
        ids = torch.stack([tokens[s : s + 64] for s in starts.tolist()])
        inputs, labels = mask_tokens(ids, mask_id=mask_id, vocab_size=vocab, generator=g)
        return {"idx": inputs, "labels": labels}

    for _ in range(400):
        loss, _ = mlm_step(model, batch(train, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = torch.from_numpy(data.val.astype("int64"))
    unigram = float((val == torch.bincount(train).argmax()).float().mean())  # ~0.19: the space
    model.eval()
    with torch.no_grad():
        _, metrics = mlm_step(model, batch(val, 256))
    assert float(metrics["masked_accuracy"]) > unigram + 0.15, (float(metrics["masked_accuracy"]), unigram)


def test_mlm_step_projects_only_the_picked_positions_and_equals_the_full_logits():
    torch.manual_seed(0)
    model = create_model("encoder-tiny", vocab_size=50, dim=32, num_layers=2, max_seq_len=16).eval()
    ids = torch.randint(0, 49, (3, 16))
    inputs, labels = mask_tokens(ids, mask_id=49, vocab_size=50, generator=torch.Generator().manual_seed(1))
    picked = labels != IGNORE_INDEX
    full = model.mlm_logits(inputs)  # (B, T, V)
    gathered = model(inputs, mlm_positions=picked)  # (N, V)
    assert gathered.shape == (int(picked.sum()), 50)
    torch.testing.assert_close(gathered, full[picked], rtol=1e-6, atol=1e-6)
    loss, metrics = mlm_step(model, {"idx": inputs, "labels": labels})
    expected = torch.nn.functional.cross_entropy(full.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["masked_accuracy"].item() == pytest.approx((full.argmax(-1)[picked] == labels[picked]).float().mean().item())
    nothing = {"idx": inputs, "labels": torch.full_like(labels, IGNORE_INDEX)}
    zero, m = mlm_step(model, nothing)
    assert zero.item() == 0.0 and m["masked_tokens"].item() == 0
