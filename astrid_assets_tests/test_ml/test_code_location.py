"""Loading the code location imports neither torch nor mlflow: every step re-imports it."""

import subprocess
import sys

import dagster as dg


def test_definitions_load_without_torch_or_mlflow():
    probe = (
        "import sys, astrid_assets.definitions as d; "
        "print(sorted(m for m in ('torch', 'mlflow', 'sklearn', 'codecarbon') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_ml_assets_are_in_the_graph():
    from astrid_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "training_set",
        "unet_patches",
        "realbogus_model",
        "unet_model",
        "anomaly_models",
        "ensemble_model",
        "candidate_scores",
    } <= keys
    assert {graph.get(dg.AssetKey("realbogus_model")).group_name} == {"ml"}
    scores = graph.get(dg.AssetKey("candidate_scores"))
    assert dg.AssetKey("ensemble_model") in scores.parent_keys
    assert dg.AssetKey("candidates") in scores.parent_keys
