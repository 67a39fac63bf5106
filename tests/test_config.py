"""Presets and overrides: complete, strict, type-checked, with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from dqnlab.config import (
    OPTIONAL_SECTIONS,
    SECTIONS,
    TOP_LEVEL,
    ConfigError,
    apply_overrides,
    load_preset,
    parse_override,
    preset_names,
)

HEADLINE = ["squared_relu", "clipped_delta_relu", "clipped_gradient_relu", "huber_relu"]


@pytest.fixture
def preset_text():
    from dqnlab.config import AGENTS_DIR

    return (AGENTS_DIR / "huber_relu.toml").read_text()


def test_headline_presets_ship():
    assert set(HEADLINE) <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_is_described(name):
    cfg = load_preset(name)
    assert cfg.name == name
    assert cfg.description and "\n" not in cfg.description


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_has_a_comment_saying_what_it_shows(name):
    from dqnlab.config import AGENTS_DIR

    first = (AGENTS_DIR / f"{name}.toml").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


def test_headline_arms_differ_only_in_loss():
    configs = [load_preset(n).to_dict() for n in HEADLINE]
    for cfg in configs[1:]:
        differing = {k for k in cfg if cfg[k] != configs[0][k]}
        assert differing <= {"name", "description", "loss"}, differing
        assert cfg["loss"]["kind"] != configs[0]["loss"]["kind"]


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path, preset_text):
    path = tmp_path / "bad.toml"
    path.write_text(preset_text.replace("gamma = 0.99", "gama = 0.99"))
    with pytest.raises(ConfigError, match=r"unknown key 'gama' \(did you mean 'gamma'\?\)"):
        load_preset(path)


def test_missing_key_is_an_error(tmp_path, preset_text):
    path = tmp_path / "bad.toml"
    path.write_text(preset_text.replace("batch_size = 64\n", ""))
    with pytest.raises(ConfigError, match="missing key.*batch_size"):
        load_preset(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ('kind = "hubber"', "'hubber' is not one of"),
        ("steps = 1.5", "expected an integer"),
        ('learning_rate = "fast"', "expected a number"),
        ("double_dqn = 1", "expected true or false"),
        ("hidden = []", "non-empty list of integers"),
        ("gamma = 1.5", "must be <= 1"),
        ("batch_size = 0", "must be >= 1"),
    ],
    ids=[
        "bad-choice",
        "float-for-int",
        "str-for-float",
        "int-for-bool",
        "empty-hidden",
        "gamma>1",
        "zero-batch",
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, preset_text, line, message):
    key = line.split(" = ")[0]
    lines = [
        line if ln.split(" = ")[0] == key and not ln.startswith("#") else ln
        for ln in preset_text.splitlines()
    ]
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=message) as info:
        load_preset(path)
    assert "\n" not in str(info.value)


def test_malformed_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[loss\nkind = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_preset(path)


def test_unknown_preset_name_suggests():
    with pytest.raises(ConfigError, match="unknown preset 'huber_rel'.*did you mean 'huber_relu'"):
        load_preset("huber_rel")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train.gamma=0.9", ("train.gamma", 0.9)),
        ("train.steps=2_000", ("train.steps", 2000)),
        ("network.hidden=[64, 64]", ("network.hidden", [64, 64])),
        ("loss.kind=huber", ("loss.kind", "huber")),
        ('loss.kind="huber"', ("loss.kind", "huber")),
        ("train.double_dqn=true", ("train.double_dqn", True)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_overrides_are_type_checked_and_frozen():
    cfg = load_preset("huber_relu", ["train.gamma=0.9", "network.hidden=[32]", "optimizer.learning_rate=1"])
    assert cfg.train.gamma == 0.9 and cfg.network.hidden == (32,)
    assert isinstance(cfg.optimizer.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.gamma = 0.5  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown key 'gama'"):
        apply_overrides(cfg, ["train.gama=0.9"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, ["train.steps=many"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides(cfg, ["train.steps"])


def test_every_field_has_a_doc():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_docs_presets_holds_every_field_row_verbatim():
    """Each key's row (type, meaning, choices, bounds) is rendered from the field itself: a changed bound or
    doc that the table does not show fails here."""
    from dqnlab.config import AGENTS_DIR, field_reference_rows

    text = (AGENTS_DIR.parent / "docs" / "presets.md").read_text()
    rows = field_reference_rows()
    assert len(rows) == len(TOP_LEVEL) + sum(
        len(dataclasses.fields(cls))
        for cls in [*SECTIONS.values(), *(c for c, _ in OPTIONAL_SECTIONS.values())]
    )
    for row in rows:
        assert row in text.splitlines(), f"docs/presets.md lacks or differs from: {row}"
    assert "| `train.gamma` | float | discount factor; >= 0.0, <= 1 |" in rows
    for name in preset_names():
        assert f"`{name}`" in text, f"docs/presets.md misses preset {name}"


def test_config_choices_match_the_registries():
    from dqnlab import config, losses
    from dqnlab.networks import NUMPY_ACTIVATIONS
    from dqnlab.optimizers import OPTIMIZER_BUILDERS

    assert set(config.LOSS_KINDS) == set(losses.LOSSES)
    assert set(config.OPTIMIZERS) == set(OPTIMIZER_BUILDERS)
    assert set(config.ACTIVATIONS) == set(NUMPY_ACTIVATIONS)


def _differing_keys(a: str, b: str) -> set[str]:
    da, db = load_preset(a).to_dict(), load_preset(b).to_dict()
    return {
        f"{section}.{key}"
        for section in SECTIONS
        for key in da[section]
        if da[section][key] != db[section][key]
    }


@pytest.mark.parametrize(
    "pathological, control, keys",
    [
        ("relu_dead", "huber_relu", {"network.bias_init", "network.bias_init_kind"}),
        ("sigmoid_saturated", "sigmoid_glorot", {"network.bias_init"}),
        # huber_relu mirrors SB3 (PyTorch's init, Adam epsilon 1e-8); the sigmoid pair mirrors no library
        (
            "sigmoid_glorot",
            "huber_relu",
            {"network.activation", "network.kernel_init", "network.bias_init_kind", "optimizer.epsilon"},
        ),
    ],
)
def test_panel_arms_differ_only_in_the_intended_keys(pathological, control, keys):
    assert _differing_keys(pathological, control) == keys
