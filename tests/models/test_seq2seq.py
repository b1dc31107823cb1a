"""The encoder-decoder family: teacher forcing, cached decoding, capability checks, generation (greedy,
sampling, beam search) and learning sequence reversal."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.attention import CapabilityError
from attnlab.data.synthetic.seq2seq import BOS, EOS, make_addition, make_reversal
from attnlab.infer.seq2seq import generate_seq2seq
from attnlab.models import EncoderDecoder, create_model
from attnlab.models.seq2seq import reorder_cache
from attnlab.objectives.seq2seq import exact_match, seq2seq_step

V = 32


def model(**overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    return create_model("seq2seq-tiny", vocab_size=V, **overrides).eval()


def src_tgt(B=3, S=9, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (B, S), generator=g), torch.randint(3, V, (B, T), generator=g)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "relative"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_cached_decoding_equals_teacher_forcing(position, prenorm):
    m = model(position=position, prenorm=prenorm)
    src, tgt = src_tgt()
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[0, 6:] = False
    full = m(src, tgt, src_key_padding_mask=mask)
    assert full.shape == (3, 6, V)
    memory, cache = m.encode(src, mask), m.new_cache(3)
    steps = [m.decode(tgt[:, t : t + 1], memory if t == 0 else None, mask, cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_decoder_is_causal_and_padded_source_tokens_change_nothing():
    m = model()
    src, tgt = src_tgt()
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[:, 5:] = False
    out = m(src, tgt, src_key_padding_mask=mask)
    src2, tgt2 = src.clone(), tgt.clone()
    src2[:, 5:] = 7  # padding: any token
    tgt2[:, 4:] = 9  # the future
    out2 = m(src2, tgt2, src_key_padding_mask=mask)
    torch.testing.assert_close(out2[:, :4], out[:, :4], atol=1e-5, rtol=1e-4)


def test_schedules_and_build_time_capability_errors():
    m = model(attention=["softmax", "sliding_window"], attention_options=[{}, {"window": 4}])
    assert [b.self_attn.kernel.name for b in m.blocks] == ["softmax", "sliding_window"]
    assert [b.attn.kernel.name for b in m.encoder.blocks] == ["softmax", "sliding_window"]
    with pytest.raises(CapabilityError, match=r"does not support cross_attention.*support cross_attention: \['softmax"):
        model(cross_attention="linear")
    with pytest.raises(CapabilityError, match="does not support causal"):
        model(attention="gpsa")
    with pytest.raises(ValueError, match="num_decoder_layers=3 must equal num_layers=2"):
        model(attention=["softmax", "softmax"], num_decoder_layers=3)
    assert len(model(num_decoder_layers=3).blocks) == 3


def test_embeddings_are_shared_and_parameters_train():
    m = model()
    assert m.head.weight is m.encoder.embed.tok_emb.weight
    src, tgt = src_tgt()
    batch = {"src": src, "tgt_in": tgt, "tgt_out": torch.roll(tgt, -1, dims=1)}
    loss, metrics = seq2seq_step(m.train(), batch)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == [] and 0 <= float(metrics["token_accuracy"]) <= 1


def test_target_rows_can_share_a_memory_row():
    """Beam search's layout: K consecutive target rows per source read its one memory row, as if it were repeated."""
    m = model(position="relative")
    src, _ = src_tgt(B=2)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[1, 5:] = False
    tgt = torch.randint(3, V, (6, 5), generator=torch.Generator().manual_seed(4))  # 3 rows per source
    memory = m.encode(src, mask)
    repeated = m.decode(tgt, memory.repeat_interleave(3, 0), mask.repeat_interleave(3, 0))
    torch.testing.assert_close(m.decode(tgt, memory, mask), repeated, atol=1e-6, rtol=1e-5)
    cache = m.new_cache(6, 5)
    steps = [m.decode(tgt[:, t:t + 1], memory if t == 0 else None, mask, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), repeated, atol=1e-5, rtol=1e-4)
    assert cache[0][1].k.shape == (2, 4, 9, 16)  # the memory's keys once per source
    with pytest.raises(ValueError, match="5 target rows cannot share a memory of 2 rows"):
        m.decode(tgt[:5], memory, mask)


def test_reorder_cache_gathers_filled_rows_into_reused_buffers():
    m = model()
    src, tgt = src_tgt(B=4, T=3)
    memory = m.encode(src)
    caches = []
    for _ in range(2):
        caches.append(m.new_cache(4, 8))
        m.decode(tgt, memory, cache=caches[-1])
    plain, reused = caches
    k0, cross_k0 = plain[0][0].k.clone(), plain[0][1].k.clone()
    first_buffer = reused[0][0].k
    index, spares = torch.tensor([2, 2, 0, 3]), {}
    reorder_cache(plain, index)
    reorder_cache(reused, index, spares)
    assert torch.equal(plain[0][0].k[:, :, :3], k0[index, :, :3]) and torch.equal(plain[0][1].k, cross_k0[index])
    reorder_cache(reused, torch.tensor([1, 0, 3, 3]), spares)  # gathers into the buffer the first step released
    assert reused[0][0].k is first_buffer
    assert torch.equal(reused[0][0].k[:, :, :3], k0[index][[1, 0, 3, 3], :, :3])
    assert torch.equal(reused[0][1].v, plain[0][1].v[[1, 0, 3, 3]])


@pytest.mark.parametrize("autocast", [False, True])
def test_inference_caches_follow_in_place_weight_changes(autocast):
    """Without gradients the shell keeps its stacked q/k/v weights (in autocast's dtype) and the decoder its
    relative-bias table; both are rebuilt when a weight changes in place: the result is a fresh model's."""
    m = model(position="relative")
    src, tgt = src_tgt()

    def run(net):  # autocast's own cast cache lives as long as its region: one region per call
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.no_grad():
            return net(src, tgt)

    before = run(m)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.25)
    after = run(m)
    fresh = EncoderDecoder(m.cfg).eval()
    fresh.load_state_dict(m.state_dict())
    assert (before - after).abs().max() > 0.1  # a stale cache would be off by as much
    torch.testing.assert_close(after, run(fresh), atol=0, rtol=0)
    if not autocast:  # and the path with gradients, which keeps nothing
        torch.testing.assert_close(after, m(src, tgt).detach(), atol=1e-5, rtol=1e-4)


def _reference_greedy(m, src, mask, steps):
    """Greedy decoding without caches: the whole target so far through the decoder at every step."""
    tgt = torch.full((src.shape[0], 1), BOS)
    for _ in range(steps):
        nxt = m(src, tgt, src_key_padding_mask=mask)[:, -1].argmax(-1, keepdim=True)
        tgt = torch.cat([tgt, nxt], dim=1)
    return tgt[:, 1:]


def _log_prob(m, src, mask, seq):
    tgt_in = torch.cat([torch.full((seq.shape[0], 1), BOS), seq[:, :-1]], dim=1)
    logp = torch.log_softmax(m(src, tgt_in, src_key_padding_mask=mask).float(), -1)
    return logp.gather(-1, seq[..., None])[..., 0].sum(-1)


def test_greedy_and_beam_search():
    m = model()
    src, _ = src_tgt(B=4)
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[1, 4:] = False
    greedy = generate_seq2seq(m, src, bos_id=BOS, max_new_tokens=7, src_key_padding_mask=mask)
    torch.testing.assert_close(greedy, _reference_greedy(m, src, mask, 7))
    one_beam = generate_seq2seq(m, src, bos_id=BOS, max_new_tokens=7, src_key_padding_mask=mask, num_beams=1)
    assert torch.equal(one_beam, greedy)
    beam = generate_seq2seq(m, src, bos_id=BOS, max_new_tokens=7, src_key_padding_mask=mask, num_beams=4,
                            length_penalty=0.0)
    assert beam.shape == greedy.shape
    # without an end token every hypothesis has 7 tokens: beam search finds at least greedy's probability
    assert (_log_prob(m, src, mask, beam) >= _log_prob(m, src, mask, greedy) - 1e-4).all()


def test_sampling_is_seeded_and_stops_at_eos():
    m = model()
    src, _ = src_tgt()
    a = generate_seq2seq(m, src, bos_id=BOS, eos_id=EOS, max_new_tokens=6, temperature=1.0,
                         generator=torch.Generator().manual_seed(3))
    b = generate_seq2seq(m, src, bos_id=BOS, eos_id=EOS, max_new_tokens=6, temperature=1.0,
                         generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for row in a.tolist():
        if EOS in row:
            assert all(t == EOS for t in row[row.index(EOS):])


@pytest.mark.parametrize("kwargs, error", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=math.nan), "temperature"),
    (dict(num_beams=2, temperature=1.0), "beam search is deterministic"),
])
def test_bad_generation_arguments_are_one_line_errors(kwargs, error):
    src, _ = src_tgt()
    with pytest.raises(ValueError, match=error):
        generate_seq2seq(model(), src, bos_id=BOS, **{"max_new_tokens": 4, **kwargs})
    with pytest.raises(TypeError, match="encoder-decoder"):
        generate_seq2seq(create_model("gpt-tiny"), src, bos_id=BOS)


def test_synthetic_problems_are_seeded_and_well_formed():
    a, b = make_reversal(num_train=50, num_test=10, seed=4), make_reversal(num_train=50, num_test=10, seed=4)
    assert torch.equal(a.train.src, b.train.src) and not torch.equal(a.train.src[:10], a.test.src)
    for i in range(50):
        n = int(a.train.src_key_padding_mask[i].sum())
        assert a.train.tgt_out[i, :n].tolist() == a.train.src[i, :n].flip(0).tolist()
        assert a.train.tgt_out[i, n] == EOS and a.train.tgt_in[i, 0] == BOS
    add = make_addition(num_train=20, num_test=5, max_digits=2, seed=1)
    row = add.train.src[0][add.train.src_key_padding_mask[0]].tolist()
    plus = row.index(3)
    x, y = (int("".join(str(t - 4) for t in part)) for part in (row[:plus], row[plus + 1:]))
    out = add.train.tgt_out[0]
    assert int("".join(str(t - 4) for t in out[out >= 4].tolist())) == x + y
    with pytest.raises(ValueError, match="min_len=5 is larger than max_len=3"):
        make_reversal(min_len=5, max_len=3)


def test_tiny_encoder_decoder_learns_reversal():
    torch.manual_seed(0)
    data = make_reversal(num_train=4000, num_test=200, min_len=2, max_len=6, num_symbols=8, seed=0)
    m = create_model("seq2seq-tiny", vocab_size=data.vocab_size)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(350):
        loss, _ = seq2seq_step(m, data.train.batch(torch.randint(0, len(data.train), (64,), generator=g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data.test
    pred = generate_seq2seq(m, test.src, bos_id=BOS, eos_id=EOS, max_new_tokens=test.tgt_out.shape[1],
                            src_key_padding_mask=test.src_key_padding_mask)
    target = test.tgt_out.masked_fill(test.tgt_out < 0, 0)
    assert exact_match(pred, target, eos_id=EOS) >= 0.99
