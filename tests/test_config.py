import pytest

from studykit.config import ConfigError, compose, list_studies


def test_default_is_embedded_quickstart_on_the_real_model():
    cfg = compose()
    assert (cfg.profile.name, cfg.study.name, cfg.model.source) == ("embedded", "quickstart", "pypi_gguf")


def test_profiles_resize_and_command_line_wins():
    smoke = compose(["profile=smoke"])
    assert smoke.model.source == "tiny_random" and smoke.train.max_steps == 2
    assert compose(["profile=smoke", "model=smollm2_135m"]).model.source == "pypi_gguf"
    assert compose(["profile=gpu"]).model.path == "Qwen/Qwen2.5-0.5B"
    assert compose(["train.learning_rate=3e-5"]).train.learning_rate == 3e-5


def test_composed_config_is_read_only():
    cfg = compose()
    with pytest.raises(Exception):
        cfg.seed = 5


@pytest.mark.parametrize("overrides, message", [
    (["study=nope"], "unknown study 'nope'.*available: .*quickstart"),
    (["profile=huge"], "unknown profile 'huge'.*embedded, gpu, smoke"),
    (["train.not_a_field=1"], "Could not override 'train.not_a_field'"),
    (["seed=abc"], "seed must be an integer"),
    (["novalue"], "Error parsing override 'novalue'"),
])
def test_bad_overrides_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_every_study_has_a_notebook():
    from studykit.config import NOTEBOOK_DIR

    for study in list_studies():
        assert (NOTEBOOK_DIR / compose([f"study={study}"]).study.notebook).is_file()
