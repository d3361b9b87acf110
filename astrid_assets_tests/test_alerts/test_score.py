"""``astrid alerts score``: our real-bogus CNN on the ingested ZTF and Rubin alerts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from astrid_assets.cli import main

N_ZTF, N_RUBIN = 136, 40
LINE = re.compile(
    r"^(?P<survey>ztf|rubin): (?P<n>\d+) alerts scored; ROC AUC of realbogus against "
    r"(?P<label>\w+) > 0\.5: (?P<auc>[0-9.]+|n/a) \((?P<labelled>\d+) with \w+: "
    r"(?P<real>\d+) real, (?P<bogus>\d+) bogus\)$",
    re.MULTILINE,
)


def _register_tiny_cnn() -> None:
    """A RealBogusNet trained a few steps on random triplets, registered as champion in
    the MLflow store of ``ASTRID_HOME``: the scores are noise, the plumbing is real."""
    import torch

    from astrid_assets.ml import registry
    from astrid_assets.ml.networks import RealBogusNet
    from astrid_assets.resources import mlflow_tracking

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(16, 3, 63, 63)).astype(np.float32))
    y = torch.from_numpy((rng.random(16) > 0.5).astype(np.float32))
    model = RealBogusNet()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss.backward()
        optimiser.step()
    tracking = mlflow_tracking()
    with tracking.start_run("tiny-realbogus"):
        uri = registry.log_torch_model(model.eval())
    registry.register_and_promote(
        tracking.client(),
        uri,
        registry.MODEL_NAMES["realbogus"],
        metric="pr_auc",
        challenger_value=0.5,
    )


@pytest.fixture
def home(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    ingest = CliRunner().invoke(
        main,
        ["alerts", "ingest", str(real_data / "ztf_alerts"), str(real_data / "rubin_alerts")],
    )
    assert ingest.exit_code == 0, ingest.output
    return tmp_path / "home"


def test_scoring_prints_an_auc_per_survey_against_their_own_scores(home):
    runner = CliRunner()
    untrained = runner.invoke(main, ["alerts", "score"])
    assert untrained.exit_code == 1
    assert "train one first" in untrained.output

    _register_tiny_cnn()
    scored = runner.invoke(main, ["alerts", "score"])
    assert scored.exit_code == 0, scored.output
    lines = {m["survey"]: m for m in LINE.finditer(scored.output)}
    assert set(lines) == {"ztf", "rubin"}, scored.output

    ztf, rubin = lines["ztf"], lines["rubin"]
    assert (ztf["n"], ztf["label"], ztf["labelled"]) == (str(N_ZTF), "drb", "95")
    assert int(ztf["real"]) + int(ztf["bogus"]) == 95
    assert (rubin["n"], rubin["label"], rubin["labelled"]) == (str(N_RUBIN), "reliability", "40")
    assert (rubin["real"], rubin["bogus"]) == ("14", "26")
    for match in (ztf, rubin):
        auc = float(match["auc"])
        assert 0.0 <= auc <= 1.0 and not math.isnan(auc)

    table = runner.invoke(
        main,
        [
            "sql",
            "SELECT survey, count(*) AS n, min(s.realbogus) >= 0 AND max(s.realbogus) <= 1 AS ok "
            "FROM external_candidates JOIN external_scores s USING (survey, candid) "
            "GROUP BY survey ORDER BY survey",
            "--csv",
        ],
    )
    assert table.exit_code == 0, table.output
    assert table.output.split() == ["survey,n,ok", f"rubin,{N_RUBIN},true", f"ztf,{N_ZTF},true"]

    only_rubin = runner.invoke(main, ["alerts", "score", "--survey", "rubin"])
    assert only_rubin.exit_code == 0, only_rubin.output
    assert [m["survey"] for m in LINE.finditer(only_rubin.output)] == ["rubin"]
