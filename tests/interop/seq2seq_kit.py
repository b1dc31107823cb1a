"""Generation parity of an attnlab encoder-decoder with transformers' ``generate`` (T5 and BART tests)."""

from __future__ import annotations

from collections import Counter

from attnlab.infer.seq2seq import generate_seq2seq


def trim(rows: list[list[int]], eos: int) -> list[list[int]]:
    """Each row up to and including its first ``eos``."""
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


def check_generation(hf, ours, inputs, beams: int, gen: dict, bos: int, eos: int, seeds=(1, 2, 3)) -> int:
    """Greedy or beam decoding of ``ours`` equals ``hf.generate`` token for token (transformers' defaults: length
    penalty 1, ``early_stopping=False``), for the model's own end token ``eos`` and then a token the model produces
    often, so that hypotheses end early and the stopping rule decides. Returns how many rows ended early."""
    ended_early = 0
    for seed in seeds:
        src, mask = inputs(seed)
        free = hf.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=12, num_beams=beams,
                           **{**gen, "eos_token_id": None})[:, 3:].flatten().tolist()
        frequent = Counter(t for t in free if t > eos).most_common(1)[0][0]
        for end in (eos, frequent):
            ref = hf.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=12, num_beams=beams,
                              length_penalty=1.0, early_stopping=False, **{**gen, "eos_token_id": end})
            out = generate_seq2seq(ours, src, bos_id=bos, eos_id=end, max_new_tokens=12, src_key_padding_mask=mask,
                                   num_beams=beams, length_penalty=1.0)
            assert trim(out.tolist(), end) == trim(ref[:, 1:].tolist(), end)
            ended_early += sum(end in row[:11] for row in out.tolist())
    return ended_early


def check_round_trip(hf_class, folder, ours, inputs, tgt, tmp_path, tol: dict) -> None:
    """``folder`` (written by attnlab) loads in ``hf_class`` with no missing/unexpected keys and the same logits, and
    attnlab's own save/load round trip is exact."""
    import torch

    import attnlab

    hf, info = hf_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    src, mask = inputs()
    src = src % ours.cfg.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits,
                                   ours(src, tgt, src_key_padding_mask=mask), **tol)
    again = attnlab.load_pretrained(attnlab.save_pretrained(ours, tmp_path / "again"))
    with torch.no_grad():
        torch.testing.assert_close(again(src, tgt, src_key_padding_mask=mask), ours(src, tgt, src_key_padding_mask=mask),
                                   atol=0, rtol=0)
