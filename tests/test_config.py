import pytest

from lit3d.config import CHOICES, ConfigError, from_yaml, help_text, load_config, to_yaml
from lit3d.students import STUDENTS
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


def test_yaml_round_trip_and_help(tmp_path):
    cfg = load_config(["student=vit", "student.latent_dim=64", "data.resolution=[24,32]"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert from_yaml(tmp_path / "config.yaml") == cfg
    text = help_text(cfg)
    assert "student.latent_dim=64  # Token width." in text
    assert f"students: {', '.join(STUDENTS.names())}" in text


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_choice_typos_are_errors_at_load_listing_the_valid_values(key):
    load_config([f"{key}={CHOICES[key][-1]}"])  # every listed value is accepted
    with pytest.raises(ConfigError, match=rf"invalid value for '{key}': 'typo'; valid values: {', '.join(CHOICES[key])}"):
        load_config([f"{key}=typo"])
