"""Typed configs: YAML round trip, dotted overrides, and errors that name the field."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from revcurse.config import (
    ModelConfig,
    RunConfig,
    ToyExperimentConfig,
    apply_overrides,
    config_hash,
    dump_yaml,
    from_dict,
    load_yaml,
    to_dict,
)
from revcurse.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = ToyExperimentConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_yaml(ToyExperimentConfig, path) == cfg
    # The YAML is a plain dump: nested mappings with the dataclass field names.
    assert yaml.safe_load(path.read_text())["model"]["d_model"] == cfg.model.d_model


def test_override_sets_typed_value():
    cfg = apply_overrides(RunConfig(), ["model.d_model=128", "train.lr=3e-4", "model.causal=true"])
    assert cfg.model.d_model == 128
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.causal is True
    assert cfg.objective == "next_token"


def test_override_list_value():
    cfg = apply_overrides(ToyExperimentConfig(), ["seeds=[3, 4]", "families=[mdm]"])
    assert cfg.seeds == [3, 4] and cfg.families == ["mdm"]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.d_modle=128", "did you mean 'model.d_model'"),
        ("modle.d_model=128", "did you mean 'model'"),
        ("model.d_model=abc", "field 'model.d_model': expected an integer, got 'abc'"),
        ("model.d_model=1.5", "field 'model.d_model': expected an integer"),
        ("model.causal=yes please", "field 'model.causal': expected true or false"),
        ("model.positional=xpos", "field 'model.positional': expected one of 'rope'"),
        ("model.n_heads=3", "field 'model.n_heads': expected a divisor of d_model=64"),
        ("train.lr=-1", "field 'train.lr': expected a number > 0"),
        ("seeds=[0, 0]", "field 'seeds': expected distinct seeds"),
        ("model=3", "'model' is a section"),
        ("model.d_model", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_field(override, fragment):
    with pytest.raises(ConfigError) as err:
        apply_overrides(ToyExperimentConfig(), [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_inconsistent_objective_is_rejected():
    with pytest.raises(ConfigError, match="train.objective"):
        apply_overrides(RunConfig(), ["train.objective=next_token"])  # model is bidirectional


def test_sequence_longer_than_model_is_rejected():
    with pytest.raises(ConfigError, match="model.max_seq_len"):
        apply_overrides(RunConfig(), ["data.n_filler=100"])


def test_rope_needs_even_head_dim():
    with pytest.raises(ConfigError, match="model.d_model"):
        from_dict(RunConfig, {"model": {"d_model": 6, "n_heads": 2}})
    # other encodings do not care
    from_dict(RunConfig, {"model": {"d_model": 6, "n_heads": 2, "positional": "learned"}})


def test_yaml_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  n_heads: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+"):
        load_yaml(RunConfig, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  n_layer: 2\n")
    with pytest.raises(
        ConfigError, match=r"typo\.yaml: unknown key 'model.n_layer'.*'model.n_layers'"
    ):
        load_yaml(RunConfig, typo)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(RunConfig, tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(RunConfig, scalar)


def test_config_hash_is_stable_and_sensitive():
    a, b = RunConfig(), RunConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(apply_overrides(a, ["train.seed=1"])) != config_hash(a)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["d_model", "n_layers", "n_heads", "mlp", "norm", "positional", "bogus"]),
        st.one_of(st.integers(-5, 300), st.booleans(), st.text(max_size=8), st.floats(-2, 2)),
        max_size=4,
    )
)
def test_fuzz_model_section_either_parses_or_raises_config_error(section):
    """Arbitrary values never crash the parser with anything but a one-line ConfigError."""
    try:
        cfg = from_dict(RunConfig, {"model": section})
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(cfg.model, ModelConfig)
        assert to_dict(cfg)["model"]["d_model"] % cfg.model.n_heads == 0


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_yaml(ToyExperimentConfig, root / "toy.yaml") == ToyExperimentConfig()
    assert load_yaml(RunConfig, root / "run-mdm.yaml").objective == "masked_diffusion"
    assert load_yaml(RunConfig, root / "run-arm.yaml").objective == "next_token"
    from revcurse.config import SweepConfig

    assert len(load_yaml(SweepConfig, root / "sweep-example.yaml").expand()) == 24
