"""Bad checkpoints fail loudly with the fix in the message; pickled code is refused, never run."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnlab.interop import load_pretrained, save_pretrained

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
    cfg["model_type"] = "mamba"
    (bad / "config.json").write_text(json.dumps(cfg))
    supported = r"\['audio-spectrogram-transformer', 'bart', 'bert', 'cvt', 'gpt2', 'swin', 't5', 'vit'\]"
    with pytest.raises(ValueError, match=r"unsupported model_type 'mamba'.*" + supported):
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


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_truncated_or_empty_safetensors_names_the_file(hf_checkpoint, tmp_path, damage):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / damage)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{bad / 'model.safetensors'} is not a readable safetensors file \(.*\); "
                                         "it is truncated or corrupt: copy or export it again"):
        load_pretrained(bad)


def _sharded(folder, dst, shard: str):
    """A copy of ``folder`` whose weights come through an index naming ``shard`` for every tensor."""
    dst.mkdir()
    (dst / "config.json").write_text((folder / "config.json").read_text())
    names = load_file(str(folder / "model.safetensors"))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in names}}))
    return dst


@pytest.mark.parametrize("where", ["dotdot", "absolute", "link_out"])
def test_shard_index_pointing_outside_the_folder_is_refused(hf_checkpoint, tmp_path, where):
    folder, _ = hf_checkpoint("BertModel")
    other = _copy(folder, tmp_path / "other")
    shard = {"dotdot": "../other/model.safetensors", "absolute": str(other / "model.safetensors"),
             "link_out": "linked/model.safetensors"}[where]
    bad = _sharded(folder, tmp_path / "model", shard)
    if where == "link_out":  # a linked folder leading out
        (bad / "linked").symlink_to(other, target_is_directory=True)
    with pytest.raises(ValueError, match=rf"names the weight file '{re.escape(shard)}', which is outside the "
                                         "checkpoint folder .*copy the shard into the folder"):
        load_pretrained(bad)


def test_a_shard_linked_to_a_blob_loads_like_the_hugging_face_cache(hf_checkpoint, tmp_path):
    """The cache's snapshot folders hold links to blobs elsewhere: a linked shard *file* is fine."""
    folder, _ = hf_checkpoint("BertModel")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    shutil.copy(folder / "model.safetensors", blobs / "abc123")
    snapshot = _sharded(folder, tmp_path / "snapshot", "model-00001-of-00001.safetensors")
    (snapshot / "model-00001-of-00001.safetensors").symlink_to(blobs / "abc123")
    reference = load_pretrained(folder)
    for (k1, v1), (k2, v2) in zip(reference.state_dict().items(), load_pretrained(snapshot).state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_shards_and_links_inside_the_folder_load(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("BertModel")
    good = _sharded(folder, tmp_path / "model", "sub/link.safetensors")
    (good / "sub").mkdir()
    shutil.copy(folder / "model.safetensors", good / "weights.safetensors")
    (good / "sub" / "link.safetensors").symlink_to(good / "weights.safetensors")
    reference = load_pretrained(folder)
    for (k1, v1), (k2, v2) in zip(reference.state_dict().items(), load_pretrained(good).state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(hf_checkpoint, tmp_path, value):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "g")
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["encoder.layer.1.output.dense.weight"][3, :2] = value
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"holds NaN or infinite weights in 'encoder\.layer\.1\.output\.dense\.weight' "
                                         r"\(2 of 1184 values\); the weights are unusable"):
        load_pretrained(bad)


def test_damaged_config_and_tokenizer_name_the_file(hf_checkpoint, tmp_path):
    bad = _copy(hf_checkpoint("BertModel")[0], tmp_path / "h")
    good_config = (bad / "config.json").read_bytes()
    (bad / "config.json").write_bytes(b"\xff" + good_config)
    with pytest.raises(ValueError, match=rf"{bad / 'config.json'} is not UTF-8 text"):
        load_pretrained(bad)
    (bad / "config.json").write_bytes(good_config)
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{bad / 'tokenizer.json'} is not a readable tokenizer"):
        load_pretrained(bad)
    with pytest.raises(ValueError, match=r"is a file; give the folder that holds config\.json"):
        load_pretrained(bad / "config.json")
    with pytest.raises(TypeError, match=r"the checkpoint folder must be a path \(str or os\.PathLike\), got NoneType"):
        load_pretrained(None)


def test_save_pretrained_onto_a_file_is_refused(hf_checkpoint, tmp_path):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(ValueError, match=rf"checkpoint folder '{tmp_path / 'afile'}' is a file, not a folder; "
                                         "remove or rename the file, or choose another path"):
        save_pretrained(model, tmp_path / "afile")
    with pytest.raises(ValueError, match=rf"cannot be created: '{tmp_path / 'afile'}' is a file, not a folder"):
        save_pretrained(model, tmp_path / "afile" / "out")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_saved_files_follow_the_umask(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("BertModel")
    source = _copy(folder, tmp_path / "src")
    (source / "tokenizer_config.json").write_text("{}")
    os.chmod(source / "tokenizer_config.json", 0o600)  # a copied file takes the umask, not its source's mode
    model = load_pretrained(source)
    old = os.umask(0o027)
    try:
        save_pretrained(model, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640, "tokenizer_config.json": 0o640}


def test_a_model_keyword_the_checkpoint_fixes_names_the_ones_that_can_change(hf_checkpoint):
    """image_size / num_classes are model settings, not kernel options: a ViT's weights fix them (its pooling may
    change: pooling='mean' leaves out the [CLS] token), and a BERT takes none."""
    folder, _ = hf_checkpoint("ViTForImageClassification")
    for keyword in ({"image_size": 64}, {"num_classes": 3}):
        with pytest.raises(ValueError, match=rf"\['{next(iter(keyword))}'\] cannot be set when loading a vit "
                                             r"checkpoint \(its position embeddings fix the image size and its key "
                                             r"map the head\); a vit checkpoint takes \['pooling'\]"):
            load_pretrained(folder, attention="softmax", **keyword)
    with pytest.raises(ValueError, match=r"\['pooling'\] cannot be set when loading a bert checkpoint; leave them out"):
        load_pretrained(hf_checkpoint("BertModel")[0], pooling="mean")


def test_per_layer_kernel_options_pass_whole_and_not_beside_keywords(hf_checkpoint):
    folder, _ = hf_checkpoint("BertModel")
    model = load_pretrained(folder, attention=["sliding_window", "softmax"],
                            attention_options=[{"window": 4}, {}])
    assert model.blocks[0].attn.kernel.window == 4 and model.blocks[1].attn.kernel.name == "softmax"
    with pytest.raises(ValueError, match="either as keywords or as attention_options=, not both"):
        load_pretrained(folder, attention="sliding_window", attention_options={"window": 4}, window=8)


def test_a_misspelt_or_fixed_keyword_is_named_with_what_the_family_takes(hf_checkpoint):
    folder, _ = hf_checkpoint("ViTForImageClassification")
    with pytest.raises(ValueError, match=r"load_pretrained has no keyword 'poolng'. Did you mean \['pooling'\]\? A vit "
                                         r"checkpoint takes \['pooling'\]"):
        load_pretrained(folder, poolng="mean")
    with pytest.raises(ValueError, match=r"'num_channels' cannot be set when loading a vit checkpoint"):
        load_pretrained(folder, num_channels=1)
