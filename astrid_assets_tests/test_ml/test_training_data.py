"""The injection training set on a small simulated survey: labels, splits, stamps, targets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from astrid_assets.ml.training_data import (
    FEATURE_COLUMNS,
    KINDS_BOGUS,
    KINDS_REAL,
    META_COLUMNS,
    TrainingSet,
    build_training_set,
)
from astrid_assets.science.simulate import SurveyConfig
from astrid_assets.science.survey import simulated_reference

CONFIG = SurveyConfig(shape=(512, 512))
FIELDS = ["F01", "F02"]
NIGHTS = ["2026-01-05", "2026-01-06", "2026-01-07"]
REFERENCE_NIGHTS = ["2026-01-03", "2026-01-04"]
SIZE = 512


@pytest.fixture(scope="module")
def references():
    return {f: simulated_reference(CONFIG, f, REFERENCE_NIGHTS) for f in FIELDS}


def _build(references, fields, nights, **kwargs):
    options = {
        "fields": fields,
        "nights": nights,
        "test_fields": [],
        "test_nights": [],
        "validation_nights": [],
        "real_per_image": 40,
        "artefacts_per_kind": 6,
        "patch_size": 64,
        "patches_per_image": 4,
        "seed": 7,
        "reference_nights": REFERENCE_NIGHTS,
        "references": references,
    }
    options.update(kwargs)
    return build_training_set(CONFIG, **options)


@pytest.fixture(scope="module")
def survey(references):
    lines: list[str] = []
    training, patches = _build(
        references,
        FIELDS,
        NIGHTS,
        test_fields=["F02"],
        validation_nights=["2026-01-07"],
        progress=lines.append,
    )
    return training, patches, lines


@pytest.fixture(scope="module")
def one_image(references):
    """F01 on the first night alone, its U-Net patch the whole difference image."""
    return _build(references, ["F01"], NIGHTS[:1], patch_size=SIZE, patches_per_image=1)


def _kind(training: TrainingSet, *kinds: str) -> np.ndarray:
    return np.isin(training.meta["kind"].to_numpy(), kinds)


def test_both_labels_and_many_bogus_kinds_are_present(survey) -> None:
    training, patches, lines = survey
    assert training.triplets.shape == (len(training), 3, 63, 63)
    assert training.triplets.dtype == np.float32
    assert training.features.shape == (len(training), len(FEATURE_COLUMNS))
    assert training.score_stamps.shape == (len(training), 2, 63, 63)
    assert list(training.meta.columns) == list(META_COLUMNS)
    assert training.meta["label"].dtype == pl.Int8
    labels = training.meta["label"].to_numpy()
    kinds = training.meta["kind"].to_numpy()
    assert set(np.unique(labels)) == {0, 1}
    assert set(kinds[labels == 1]) <= set(KINDS_REAL)
    assert set(kinds[labels == 0]) <= set(KINDS_BOGUS)
    assert {"psf_empty", "psf_galaxy"} <= set(kinds)
    injected = {"dipole", "cosmic_ray", "hot_pixel", "bad_column", "streak"}
    anomalies = {"anomaly_bright", "anomaly_dark", "anomaly_streak"}
    assert injected <= set(kinds) and anomalies <= set(kinds)
    # Real rows carry the truth they matched; bogus rows have none.
    real = training.meta.filter(pl.col("label") == 1)
    assert real["mag"].null_count() == 0
    assert training.meta.filter(pl.col("label") == 0)["mag"].null_count() == len(labels) - len(real)
    # Every image reported, one line each after the references.
    assert sum("detections" in line for line in lines) == len(FIELDS) * len(NIGHTS)
    assert len(patches.inputs) == len(FIELDS) * len(NIGHTS) * 4


def test_vetting_keeps_most_real_sources_and_drops_most_artefacts(survey) -> None:
    training, _, _ = survey
    vetted = training.meta["vetted"].to_numpy()
    injected_real = _kind(training, "psf_empty", "psf_galaxy")
    assert vetted[injected_real].mean() > 0.85
    assert vetted[_kind(training, "streak", "anomaly_streak")].mean() < 0.5
    assert vetted[training.meta["label"].to_numpy() == 0].mean() < 0.5


def test_splits_never_share_a_field_and_night(survey) -> None:
    training, patches, _ = survey
    per_image = training.meta.group_by("field", "night").agg(pl.col("split").n_unique())
    assert per_image["split"].max() == 1
    meta = training.meta
    test = meta.filter(pl.col("split") == "test")
    assert set(test["field"]) == {"F02"}
    validation = meta.filter(pl.col("split") == "validation")
    assert set(validation["field"]) == {"F01"} and set(validation["night"]) == {"2026-01-07"}
    train = meta.filter(pl.col("split") == "train")
    assert set(train["field"]) == {"F01"} and "2026-01-07" not in set(train["night"])
    assert list(np.unique(patches.split, return_counts=True)[1]) == [12, 8, 4]
    balance = training.class_balance()
    assert balance["all"]["rows"] == len(training)
    assert sum(balance[s]["rows"] for s in ("train", "validation", "test")) == len(training)
    assert sum(balance["test"]["kinds"].values()) == balance["test"]["rows"]
    assert balance["all"]["real"] + balance["all"]["bogus"] == len(training)
    test_only = training.subset("test")
    assert len(test_only) == balance["test"]["rows"]
    assert set(test_only.meta["split"]) == {"test"}


def test_frame_round_trip_is_exact(survey, tmp_path) -> None:
    training, _, _ = survey
    frame = training.to_frame()
    assert frame.schema["cutout_difference"] == pl.Array(pl.Float32, 63 * 63)
    assert set(FEATURE_COLUMNS) <= set(frame.columns)
    path = tmp_path / "training.parquet"
    frame.write_parquet(path)
    for back in (TrainingSet.from_frame(frame), TrainingSet.from_frame(pl.read_parquet(path))):
        assert back.meta.equals(training.meta)
        assert np.array_equal(back.triplets, training.triplets, equal_nan=True)
        assert np.array_equal(back.features, training.features, equal_nan=True)
        assert np.array_equal(back.score_stamps, training.score_stamps)
    empty = training.subset(mask=np.zeros(len(training), bool))
    assert len(TrainingSet.from_frame(empty.to_frame())) == 0


def test_injected_point_source_peaks_at_the_centre_of_its_difference_stamp(survey) -> None:
    training, _, _ = survey
    rows = np.flatnonzero(_kind(training, "psf_empty") & (training.meta["snr"].to_numpy() > 10))
    assert len(rows) >= 20
    centre = 31
    offsets = []
    for i in rows:
        stamp = np.nan_to_num(training.triplets[i, 2], nan=-np.inf)
        core = stamp[centre - 8 : centre + 9, centre - 8 : centre + 9]
        py, px = np.unravel_index(np.argmax(core), core.shape)
        offsets.append(np.hypot(px - 8, py - 8))
    assert np.mean(np.asarray(offsets) <= 1.5) >= 0.9
    # And the science stamp shows it too: brighter at the centre than the reference.
    science = training.triplets[rows, 0, centre, centre]
    reference = training.triplets[rows, 1, centre, centre]
    assert np.median(science - reference) > 0


def test_features_separate_real_from_bogus_in_the_expected_direction(survey) -> None:
    training, _, _ = survey
    column = {name: k for k, name in enumerate(FEATURE_COLUMNS)}
    real = _kind(training, "psf_empty", "psf_galaxy")
    sharp = _kind(training, "cosmic_ray", "hot_pixel")
    fwhm_ratio = training.features[:, column["fwhm_ratio"]]
    assert np.nanmedian(fwhm_ratio[real]) == pytest.approx(1.0, abs=0.1)
    assert np.nanmedian(fwhm_ratio[sharp]) < 0.7
    sharpness = training.features[:, column["sharpness"]]
    assert np.nanmedian(sharpness[sharp]) > 1.5 * np.nanmedian(sharpness[real])
    dipole = training.features[:, column["dipole"]]
    assert np.nanmedian(dipole[_kind(training, "dipole")]) > 0.3 > np.nanmedian(dipole[real])
    lines = _kind(training, "streak", "bad_column", "anomaly_streak")
    assert np.nanmedian(fwhm_ratio[lines]) > 1.5


def test_unet_targets_mark_real_sources_and_not_artefacts(one_image) -> None:
    training, patches = one_image
    assert patches.inputs.shape == (1, 2, SIZE, SIZE)
    assert patches.targets.shape == (1, 1, SIZE, SIZE)
    target = patches.targets[0, 0]
    assert set(np.unique(target)) == {0.0, 1.0}
    assert target.mean() < 0.05
    x = np.round(training.meta["x"].to_numpy()).astype(int)
    y = np.round(training.meta["y"].to_numpy()).astype(int)
    at = target[y, x]
    real = _kind(training, "psf_empty", "psf_galaxy") & (training.meta["snr"].to_numpy() > 5)
    assert real.sum() >= 10 and at[real].all()
    bogus = training.meta["label"].to_numpy() == 0
    assert bogus.sum() >= 10 and not at[bogus].any()
    # Channel 0 is D over its noise: real sources stand out there, clipped at 50.
    assert np.all(np.abs(patches.inputs) <= 50.0)
    assert np.median(patches.inputs[0, 0][y[real], x[real]]) > 3.0


def test_build_is_deterministic_and_independent_of_the_other_images(survey, one_image, references):
    training, _, _ = survey
    alone, patches = one_image
    again, patches_again = _build(
        references, ["F01"], NIGHTS[:1], patch_size=SIZE, patches_per_image=1
    )
    for other in (again, training.subset(mask=_same_image(training, "F01", NIGHTS[0]))):
        assert other.meta.drop("split").equals(alone.meta.drop("split"))
        assert np.array_equal(other.triplets, alone.triplets, equal_nan=True)
        assert np.array_equal(other.features, alone.features, equal_nan=True)
    assert np.array_equal(patches.inputs, patches_again.inputs)
    assert np.array_equal(patches.targets, patches_again.targets)
    reseeded, _ = _build(references, ["F01"], NIGHTS[:1], patch_size=SIZE, seed=8)
    assert not np.array_equal(reseeded.meta["x"].to_numpy(), alone.meta["x"].to_numpy())


def _same_image(training: TrainingSet, field: str, night: str) -> np.ndarray:
    meta = training.meta
    return ((meta["field"] == field) & (meta["night"] == night)).to_numpy()


def test_inconsistent_splits_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="both test and validation"):
        build_training_set(
            CONFIG,
            fields=FIELDS,
            nights=NIGHTS,
            test_fields=[],
            test_nights=["2026-01-07"],
            validation_nights=["2026-01-07"],
        )
    with pytest.raises(ValueError, match="reference_nights"):
        build_training_set(
            CONFIG,
            fields=FIELDS,
            nights=NIGHTS,
            test_fields=[],
            test_nights=[],
            validation_nights=[],
            reference_nights=["2026-01-05"],
        )
    with pytest.raises(ValueError, match="unknown field"):
        build_training_set(
            CONFIG,
            fields=["F99"],
            nights=NIGHTS,
            test_fields=[],
            test_nights=[],
            validation_nights=[],
        )
    with pytest.raises(ValueError, match="not among fields"):
        build_training_set(
            CONFIG,
            fields=FIELDS,
            nights=NIGHTS,
            test_fields=["F03"],
            test_nights=[],
            validation_nights=[],
        )
