import dataclasses
import re

import pytest

from lit3d.config import (CHOICES, FREE_TEXT_KEYS, LIGHTNING_PRECISIONS, PATTERNS, ConfigError, FitConfig,
                          choice_values, from_yaml, help_text, load_config, to_yaml)
from lit3d.students import STUDENTS
from lit3d.teachers import TEACHERS
from lit3d.students.vit import ViTConfig


def test_defaults_are_typed_and_group_sugar_selects_the_student_config():
    cfg = load_config(["student=vit", "student.depth=4", "trainer.max_epochs=5"])
    assert isinstance(cfg.student, ViTConfig)
    assert cfg.student.depth == 4 and cfg.student.patch_size == 16
    assert cfg.trainer.max_epochs == 5


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'student.depht'; valid keys of student: .*depth"):
        load_config(["student=vit", "student.depht=3"])
    with pytest.raises(ConfigError, match="unknown config key 'trainr'"):
        load_config(["trainr.max_epochs=1"])
    # a key valid for another student is not valid for this one
    with pytest.raises(ConfigError, match="unknown config key 'student.patch_size'"):
        load_config(["student=mobilenetv3", "student.patch_size=8"])


def test_unknown_student_and_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match=f"unknown student 'resnet'; valid students: {', '.join(STUDENTS.names())}"):
        load_config(["student=resnet"])
    with pytest.raises(ConfigError, match="trainer.max_epochs") as e:
        load_config(["trainer.max_epochs=many"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(["student"])


def test_experiment_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("student:\n  name: vit\n  depth: 3\ntrainer:\n  max_epochs: 7\n")
    cfg = load_config([f"experiment={path}", "student.depth=5"])
    assert cfg.experiment == "exp" and cfg.student.depth == 5 and cfg.trainer.max_epochs == 7
    with pytest.raises(ConfigError, match="experiment file .*nope.yaml not found"):
        load_config(["experiment=nope"])


def test_an_empty_value_on_the_command_line_clears_a_text_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  intrinsics: calib/K.txt\n")
    assert load_config([f"experiment={path}", "data.intrinsics="]).data.intrinsics == ""
    with pytest.raises(ConfigError, match="data.resolution"):  # a list is cleared with [], not an empty value
        load_config(["data.resolution="])


@pytest.mark.parametrize("args, data_hw, loader_hw", [
    ([], [96, 128], [96, 128]),  # the synthetic scene's default (its 10-minute default run)
    (["data.format=folder", "data.root=x"], [192, 256], [192, 256]),  # recorded images
    (["data.format=sevenscenes", "data.resolution=[48,64]"], [48, 64], [48, 64]),  # the student follows the labels
    (["data.format=images", "loader.resolution=[96,128]"], [192, 256], [96, 128]),  # or resamples them
    (["experiment=vit_best", "data.format=twelvescenes"], [96, 128], [96, 128]),  # paper configurations: as trained
    (["experiment=mobilenetv3_frozen", "data.format=sevenscenes"], [96, 128], [96, 128]),
])
def test_resolution_defaults_to_the_formats_and_the_student_follows_the_labels(args, data_hw, loader_hw, tmp_path):
    cfg = load_config(args)
    assert (cfg.data.resolution, cfg.loader.resolution) == (data_hw, loader_hw)
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))  # a run's config.yaml records the resolved sizes
    assert "resolution: []" not in to_yaml(cfg) and from_yaml(tmp_path / "config.yaml") == cfg


def test_yaml_round_trip_and_help(tmp_path):
    cfg = load_config(["student=vit", "student.latent_dim=64", "data.resolution=[24,32]"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert from_yaml(tmp_path / "config.yaml") == cfg
    text = help_text(cfg)
    assert "student.latent_dim=64  # Token width." in text
    assert f"students: {', '.join(STUDENTS.names())}" in text


def _components(section: str) -> list[tuple[str, type]]:
    """(registered name, config class) of every student or teacher."""
    registry = {"student": STUDENTS, "teacher": TEACHERS}[section]
    return [(name, registry.get(name).config_cls) for name in registry.names()]


def _with_component(key: str) -> list[str]:
    """``student=NAME`` / ``teacher=NAME`` of the first component whose config has the field ``key`` names."""
    section, name = key.split(".")
    if section not in ("student", "teacher"):
        return []
    return [next(f"{section}={n}" for n, cls in _components(section) if name in {f.name for f in dataclasses.fields(cls)})]


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_choice_typos_are_errors_at_load_listing_the_valid_values(key):
    component = _with_component(key)
    load_config([*component, f"{key}={choice_values(key)[-1]}"])  # every listed value is accepted
    with pytest.raises(ConfigError, match=rf"invalid value for '{key}': 'typo'; valid values: {re.escape(', '.join(choice_values(key)))}"):
        load_config([*component, f"{key}=typo"])


def _text_keys() -> set[str]:
    """Dotted keys of every text (or Any) field of FitConfig's sections and of every student and teacher config."""
    keys = set()
    for f in dataclasses.fields(FitConfig):
        value = getattr(FitConfig(), f.name)
        if f.name in ("student", "teacher"):
            classes = [cls for _, cls in _components(f.name)]
        elif dataclasses.is_dataclass(value):
            classes = [type(value)]
        else:
            keys.add(f.name) if f.type in ("str", "Any") else None
            continue
        keys |= {f"{f.name}.{g.name}" for cls in classes for g in dataclasses.fields(cls) if g.type in ("str", "Any")}
    return keys


def test_every_text_field_is_a_checked_choice_or_declared_free_text():
    """A new text field must be added to CHOICES (or PATTERNS) when it names one of a few values, so its typos fail
    at load and not after the teacher ran; or to FREE_TEXT_KEYS (paths, open registries) with what it holds."""
    keys = _text_keys()
    assert len(keys) > 30  # the walk found the fields
    declared = set(CHOICES) | set(PATTERNS) | set(FREE_TEXT_KEYS)
    assert keys - declared == set(), "text fields without a CHOICES, PATTERNS or FREE_TEXT_KEYS entry"
    assert declared - keys == set(), "entries for fields that do not exist"
    assert not set(CHOICES) & set(FREE_TEXT_KEYS)


def test_precisions_are_lightnings():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    lightning = {str(v) for alias in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(alias)}
    assert set(LIGHTNING_PRECISIONS) <= lightning


@pytest.mark.parametrize("arg, message", [
    ("loader.resolution=[0,5]", "invalid value for 'loader.resolution': [0, 5]; it must be >= 1"),
    ("loader.resolution=[96]", "invalid value for 'loader.resolution': [96]; it takes two values"),
    ("data.stride=0", "invalid value for 'data.stride': 0; it must be >= 1"),
    ("trainer.max_epochs=-1", "invalid value for 'trainer.max_epochs': -1; it must be >= 1"),
    ("loader.batch_size=0", "invalid value for 'loader.batch_size': 0; it must be >= 1"),
    ("pairs.graph=swn-3", "invalid value for 'pairs.graph': 'swn-3'; valid values: complete, covis, swin-K"),
    ("align.device=cdua", "invalid value for 'align.device': 'cdua'; valid values: auto, cpu, cuda, cuda:N"),
])
def test_out_of_range_and_malformed_values_name_their_key_at_load(arg, message):
    with pytest.raises(ConfigError) as e:
        load_config([arg])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_valid_forms_load():
    for arg in ("pairs.graph=swin-5-noncyclic", "pairs.graph=logwin", "pairs.graph=oneref-3", "align.device=cuda:1",
                "data.test_every=0", "trainer.precision=bf16-mixed"):
        load_config([arg])
