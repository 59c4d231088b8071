"""Studies as data: registered YAML studies, a user's own file, and clear errors."""

import pytest

from sweeps.cli import SMOKE_BASE, sweep_spec
from sweeps.study import StudyError, load_study, study_names


def test_every_registered_study_loads_and_checks():
    assert {"emr_wrn", "lma_resnet18", "he_wrn", "amr_mnist", "smd_wrn", "trades_wrn",
            "mart_wrn"} <= set(study_names())
    for name in study_names():
        study = load_study(name)
        assert study.description and study.spec.config.epochs >= 1, name
    emr = load_study("emr_wrn").spec
    assert (emr.config.defense, emr.config.model, emr.num_samples) == ("emr", "wrn-34-10", 32)
    assert emr.base["bf16"] is True and emr.base["val_subset"] == 1000


def test_smoke_base_replaces_the_smoke_model():
    study = load_study("he_wrn")
    spec = sweep_spec(study.spec, ["--smoke"], study.smoke_base)
    assert spec.base["model"] == "small_cnn" and spec.base["model_params"] == {}
    assert spec.base["dataset"] == SMOKE_BASE["dataset"] and spec.num_samples == 4


def test_a_users_study_file_without_python(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: my-trades\npreset: trades/trades_paper\n"
                    "base: {dataset: mnist, model: mlp, epochs: 2}\nnum_samples: 3\n"
                    "sampler: random\n")
    spec = load_study(path).spec
    assert (spec.name, spec.num_samples, spec.sampler) == ("my-trades", 3, "random")
    assert spec.config.defense == "trades" and spec.config.defense_params["beta"] == 6.0


@pytest.mark.parametrize("text, message", [
    ("name: x\nbase: {defense: trades}\nnum_trials: 3\n", "unknown field.*num_trials"),
    ("name: x\nbase: {defense: nonsense}\n", "nonsense"),
    ("name: x\nbase: {defense: trades}\nsampler: grid\n", "sampler must be one of"),
    ("- a list\n", "mapping"),
])
def test_bad_study_files_fail_with_the_reason(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_unknown_study_names_the_known_ones():
    with pytest.raises(StudyError, match="emr_wrn"):
        load_study("no_such_study")
