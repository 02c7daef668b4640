"""MDLM / BD3-LM (kuleshov-group DiT) releases: detected from config.json and refused with a clear message."""

import json
import pickle

import pytest

from explorer.released.dit import is_dit_release, load_dit

MDLM_CONFIG = {  # field names of kuleshov-group/mdlm-owt's config.json (configuration_mdlm.MDLMConfig)
    "architectures": ["MDLM"], "model_type": "mdlm",
    "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
    "vocab_size": 50258, "model_length": 1024, "hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12,
    "dropout": 0.1, "time_conditioning": False,
}
BD3LM_CONFIG = {  # field names of kuleshov-group/bd3lm-owt-block_size*'s config.json (BD3LMConfig)
    "architectures": ["BD3LM"], "model_type": "bd3lm",
    "auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig", "AutoModelForMaskedLM": "modeling_bd3lm.BD3LM"},
    "block_size": 4, "vocab_size": 50258, "model_length": 1024, "cross_attn": True, "adaln": True,
    "attn_backend": "flex", "causal": False, "hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12,
    "dropout": 0.1, "time_conditioning": False, "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 0.999,
}
LLADA_LIKE = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": 4096, "n_layers": 32,
              "n_heads": 32, "vocab_size": 126464}
DREAM_LIKE = {"architectures": ["DreamModel"], "model_type": "Dream", "hidden_size": 3584, "vocab_size": 152064}


def folder(tmp_path, config, name="release"):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("config", [MDLM_CONFIG, BD3LM_CONFIG])
def test_released_configs_are_detected(config):
    assert is_dit_release(config)


def test_detected_by_remote_files_or_shape_fields_alone():
    assert is_dit_release({"auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig"}})
    shape = {k: MDLM_CONFIG[k] for k in ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length")}
    assert is_dit_release(shape)


@pytest.mark.parametrize("config", [LLADA_LIKE, DREAM_LIKE, {}, {"model_type": "gpt2"},
                                    {**MDLM_CONFIG, "family": "mdlm"}, "not a dict"])
def test_other_configs_are_not_detected(config):
    assert not is_dit_release(config)


@pytest.mark.parametrize("config, kind", [(MDLM_CONFIG, "MDLM"), (BD3LM_CONFIG, "BD3-LM")])
def test_release_is_refused_naming_file_and_what_is_unsupported(tmp_path, config, kind):
    path = folder(tmp_path, config)
    (path / "model.safetensors").write_bytes(b"")  # never opened
    with pytest.raises(ValueError) as err:
        load_dit(path)
    message = str(err.value)
    assert str(path / "config.json") in message
    assert f"kuleshov-group {kind} release" in message
    assert "not supported yet" in message and "adaLN_modulation" in message
    assert "supported released layouts: llada, dream" in message
    for field in ("model_type", "hidden_dim", "cond_dim", "n_blocks", "n_heads", "model_length"):
        assert field in message
    if kind == "BD3-LM":
        assert "block_size=4" in message


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickles_are_refused_without_unpickling(tmp_path, monkeypatch, suffix):
    path = folder(tmp_path, MDLM_CONFIG)
    pickled = path / f"model{suffix}"
    pickled.write_bytes(pickle.dumps({"weights": 1}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    for target in (pickled, path):  # the file itself, or a folder holding only the pickle
        with pytest.raises(ValueError, match="pickled checkpoint") as err:
            load_dit(target)
        assert str(pickled) in str(err.value)


def test_non_dit_folder_is_not_claimed(tmp_path):
    with pytest.raises(ValueError, match="not an MDLM / BD3-LM release"):
        load_dit(folder(tmp_path, LLADA_LIKE))


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_dit(tmp_path)
