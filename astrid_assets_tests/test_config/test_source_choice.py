"""ASTRID_SOURCE picks the survey source; its settings come from the environment or a
YAML file, and a wrong value is refused by name."""

import pytest

from astrid_assets.resources import survey_source
from astrid_assets.sources import LocalFitsSource, SimulatedSurvey
from astrid_assets.sources.archives import ZtfSource

SOURCE_VARIABLES = (
    "ASTRID_SOURCE",
    "ASTRID_SOURCE_CONFIG",
    "ASTRID_LOCAL_ROOT",
    "ASTRID_LOCAL_MANIFEST",
)


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in SOURCE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    return monkeypatch


def test_the_simulated_survey_is_the_default(env):
    assert isinstance(survey_source(), SimulatedSurvey)


def test_an_unknown_source_is_refused(env):
    env.setenv("ASTRID_SOURCE", "hubble")
    with pytest.raises(ValueError, match="ASTRID_SOURCE must be one of simulated, local, ztf"):
        survey_source()


def test_a_folder_of_fits_from_the_environment(env, real_data, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("only_listed: true\nfiles: []\n")
    env.setenv("ASTRID_SOURCE", "local")
    env.setenv("ASTRID_LOCAL_ROOT", str(real_data / "images" / "decam_sfft"))
    env.setenv("ASTRID_LOCAL_MANIFEST", str(manifest))
    source = survey_source()
    assert isinstance(source, LocalFitsSource)
    assert source.root.endswith("decam_sfft") and source.manifest == str(manifest)
    assert source.fields() == []  # the manifest lists nothing


def test_a_folder_needs_its_root(env):
    env.setenv("ASTRID_SOURCE", "local")
    with pytest.raises(ValueError, match="ASTRID_SOURCE=local needs ASTRID_LOCAL_ROOT"):
        survey_source()


def test_archive_settings_come_from_the_yaml_file(env, tmp_path):
    config = tmp_path / "ztf.yaml"
    config.write_text(
        "start_night: 2020-02-01\n"
        "quadrants:\n"
        "  - {name: f633c13q4, ztf_field: 633, ccdid: 13, qid: 4, filtercode: zr}\n"
    )
    env.setenv("ASTRID_SOURCE", "ztf")
    env.setenv("ASTRID_SOURCE_CONFIG", str(config))
    source = survey_source()
    assert isinstance(source, ZtfSource)
    assert source.fields() == ["f633c13q4"]


def test_a_wrong_archive_setting_names_the_file(env, tmp_path):
    config = tmp_path / "ps1.yaml"
    config.write_text("start_night: 2020-02-01\npointings: [{name: M31, ra: 10.68}]\n")
    env.setenv("ASTRID_SOURCE", "ps1")
    env.setenv("ASTRID_SOURCE_CONFIG", str(config))
    with pytest.raises(ValueError, match=rf"ASTRID_SOURCE=ps1 settings in {config}") as err:
        survey_source()
    assert "dec" in str(err.value)
