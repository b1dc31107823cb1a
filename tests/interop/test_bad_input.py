"""Bad checkpoints fail loudly with the fix in the message; pickled code is refused, never run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnlab.interop import load_pretrained

pytest.importorskip("transformers")


def _copy(folder, dst):
    shutil.copytree(folder, dst)
    return dst


def test_missing_folder_config_or_weights(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("BertModel")
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path / "nowhere")
    no_config = _copy(folder, tmp_path / "a")
    (no_config / "config.json").unlink()
    with pytest.raises(ValueError, match=r"has no config\.json.*model\.safetensors"):
        load_pretrained(no_config)
    no_weights = _copy(folder, tmp_path / "b")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"has no weights: expected one of .*pytorch_model\.bin"):
        load_pretrained(no_weights)


def test_unsupported_model_type_lists_supported(hf_checkpoint, tmp_path):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "c")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "t5"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported model_type 't5'.*\['bert', 'gpt2', 'vit'\]"):
        load_pretrained(bad)


def test_unsupported_feature_is_named(hf_checkpoint, tmp_path):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "d")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["position_embedding_type"] = "relative_key"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        load_pretrained(bad)


def test_shape_mismatch_names_the_tensor(hf_checkpoint, tmp_path):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "e")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(40, 32)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.intermediate\.dense\.weight.*\(40, 32\).*\(37, 32\)"):
        load_pretrained(bad)


def test_missing_and_unexpected_keys_are_listed(hf_checkpoint, tmp_path):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "f")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["encoder.layer.0.attention.self.key.bias"]
    tensors["encoder.layer.0.extra.weight"] = torch.zeros(3)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['encoder\.layer\.0\.attention\.self\.key\.bias'\]; "
                                         r"unexpected \['encoder\.layer\.0\.extra\.weight'\]"):
        load_pretrained(bad)
    model = load_pretrained(bad, strict=False)  # the caller asked: loads, and says what it skipped
    assert model.hf_info["skipped"] == ["encoder.layer.0.extra.weight"]
    assert "blocks.0.attn.k_proj.bias" in model.hf_info["initialised"]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_not_executed(hf_checkpoint, tmp_path):
    folder, hf = hf_checkpoint("BertModel")
    bad = tmp_path / "evil"
    bad.mkdir()
    (bad / "config.json").write_text((folder / "config.json").read_text())
    marker = tmp_path / "pwned"
    torch.save({**hf.state_dict(), "payload": _Payload(marker)}, bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load .*pytorch_model\.bin.*weights_only=True"):
        load_pretrained(bad)
    assert not marker.exists()
    # the payload is live: an unsafe load of the same kind of file does create its marker
    live = tmp_path / "live.bin"
    torch.save({"payload": _Payload(tmp_path / "proof")}, live)
    torch.load(live, weights_only=False)
    assert (tmp_path / "proof").exists()


def test_bin_that_is_not_a_state_dict_is_refused(hf_checkpoint, tmp_path):
    bad = tmp_path / "list"
    bad.mkdir()
    (bad / "config.json").write_text((hf_checkpoint("BertModel")[0] / "config.json").read_text())
    torch.save([torch.zeros(2)], bad / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_pretrained(bad)
