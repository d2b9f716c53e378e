"""Task-aware allocation for Hugging Face folders (weights + config.json): rdformat.hf_calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import save_file  # noqa: E402

from rdformat import calibrate  # noqa: E402
from rdformat.cli import main as rdc_main  # noqa: E402
from rdformat.hf_calibration import find_config, hf_output_sensitivity  # noqa: E402

VALUE = "encoder.layer.1.attention.self.value"
AFTER = "encoder.layer.1.attention.output.dense"


def _bert_folder(tmp_path, *, fragile: bool = False, config_edit=None):
    """A 2-layer BERT (random weights) saved as a Hugging Face folder. ``fragile``: layer 1's value
    projection scaled by 0.01 and the projection after it by 100 (the same function; an error in the
    value weights now moves the outputs 100x more)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    if fragile:
        for k in (f"{VALUE}.weight", f"{VALUE}.bias"):
            state[k] = state[k] * np.float32(0.01)
        state[f"{AFTER}.weight"] = state[f"{AFTER}.weight"] * np.float32(100)
    save_file(state, str(tmp_path / "model.safetensors"))
    raw = config.to_dict()
    raw["architectures"] = ["BertModel"]
    if config_edit:
        config_edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path / "model.safetensors", state


def test_a_fragile_tensor_of_a_hugging_face_checkpoint_ranks_first(tmp_path):
    path, state = _bert_folder(tmp_path, fragile=True)
    sens, arch = hf_output_sensitivity(state, find_config(path), seconds=None)
    assert arch == "BertModel"
    two_d = {k for k, v in state.items() if v.ndim >= 2 and v.size >= 16 and v.dtype.kind == "f"}
    assert set(sens) == two_d
    # first among the layers' weights (the token-type table, added to every token, may rank above all)
    layers = {k: v for k, v in sens.items() if k.startswith("encoder.")}
    assert max(layers, key=layers.get) == f"{VALUE}.weight"
    (tmp_path / "plain").mkdir()
    plain_path, plain = _bert_folder(tmp_path / "plain")
    base, _ = hf_output_sensitivity(plain, find_config(plain_path), seconds=None)
    # the same function, a 100x finer tensor: its per-element sensitivity grows by about 100**2
    ratio = sens[f"{VALUE}.weight"] / base[f"{VALUE}.weight"]
    assert 3e3 < ratio < 3e4
    # seeded: the same figures again
    again, _ = hf_output_sensitivity(state, find_config(path), seconds=None)
    assert again == sens


@pytest.mark.parametrize("edit, why", [
    (lambda c: c.update(model_type="no-such-model"), "cannot read"),
    (lambda c: c.update(hidden_size=48), "do not match"),
    (lambda c: c.pop("model_type"), "model_type"),
    # a build of ten million layers, even on the meta device, would hang: refused before building
    (lambda c: c.update(num_hidden_layers=10_000_000), "more than the file"),
])
def test_configs_that_do_not_describe_the_weights_fall_back_with_a_notice(tmp_path, edit, why):
    path, _ = _bert_folder(tmp_path, config_edit=edit)
    found = calibrate.hf_sensitivity(path)
    assert found.sensitivity is None
    assert why in found.notice and "weight error" in found.notice


def test_a_config_json_that_is_not_json_falls_back(tmp_path):
    path, _ = _bert_folder(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff{not json")
    found = calibrate.hf_sensitivity(path)
    assert found.sensitivity is None and "not readable JSON" in found.notice


def test_no_config_means_no_attempt(tmp_path):
    path, _ = _bert_folder(tmp_path)
    (tmp_path / "config.json").unlink()
    assert calibrate.hf_sensitivity(path) is None


def test_rdc_compress_runs_a_hugging_face_folder_and_lowers_its_output_error(tmp_path, capsys):
    path, state = _bert_folder(tmp_path, fragile=True)
    model = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 120, (8, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = model(input_ids=ids).last_hidden_state.numpy()

    def error(rdc):
        import rdformat

        decoded = rdformat.load(str(rdc))
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoded.items()}, strict=False)
        with torch.no_grad():
            out = model(input_ids=ids).last_hidden_state.numpy()
        return float(np.linalg.norm(out - reference) / np.linalg.norm(reference))

    assert rdc_main(["compress", str(path), str(tmp_path / "task.rdc"), "--bits", "3"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "task-aware" in said and "BertModel" in said
    assert rdc_main(["compress", str(path), str(tmp_path / "plain.rdc"), "--bits", "3", "--no-calibrate"]) == 0
    assert error(tmp_path / "task.rdc") < 0.5 * error(tmp_path / "plain.rdc")


def test_a_pytorch_model_bin_with_its_config_is_run_too(tmp_path):
    path, state = _bert_folder(tmp_path, fragile=True)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    found = calibrate.hf_sensitivity(tmp_path / "pytorch_model.bin", fmt="pytorch")
    from_st = calibrate.hf_sensitivity(path)
    assert found.sensitivity == from_st.sensitivity and "BertModel" in found.notice


def _save_pretrained(tmp_path, config, cls):
    torch.manual_seed(0)
    cls(config).save_pretrained(str(tmp_path))
    return tmp_path / "model.safetensors"


def test_a_causal_lm_runs_and_an_encoder_decoder_falls_back(tmp_path):
    (tmp_path / "gpt2").mkdir()
    gpt2 = _save_pretrained(tmp_path / "gpt2", transformers.GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=2,
                                                                       n_positions=64), transformers.GPT2LMHeadModel)
    found = calibrate.hf_sensitivity(gpt2)
    assert found.sensitivity and "GPT2LMHeadModel" in found.notice
    # T5 needs decoder inputs, which synthetic token ids alone do not give: a notice, never a crash
    (tmp_path / "t5").mkdir()
    t5 = _save_pretrained(tmp_path / "t5", transformers.T5Config(vocab_size=200, d_model=32, d_kv=8, d_ff=64,
                                                                 num_layers=2, num_heads=2),
                          transformers.T5ForConditionalGeneration)
    found = calibrate.hf_sensitivity(t5)
    assert found.sensitivity is None and "fails on synthetic inputs" in found.notice


def test_a_checkpoint_too_large_to_build_here_is_not_run(tmp_path, monkeypatch):
    path, _ = _bert_folder(tmp_path)
    monkeypatch.setattr(calibrate, "HF_MAX_FILE_BYTES", path.stat().st_size - 1)
    found = calibrate.hf_sensitivity(path)
    assert found.sensitivity is None and "too large" in found.notice and "weight error" in found.notice
