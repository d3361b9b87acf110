"""Real-bogus quality on held-out simulated data and on real ZTF alerts.

Run with ``python benchmarks/ml_metrics.py [--size 1024] [--epochs 25]``.

Builds a training set by injection on the simulated survey (fields and
nights split: the test rows come from a field and a night never trained
on), trains the CNN and the U-Net, fits the Isolation Forest and the
One-Class SVM and stacks them, exactly as the Dagster assets do (with a
throw-away MLflow store), and prints the held-out metrics of every model:
ROC-AUC, PR-AUC, false-positive rate at 1% and 2% false-negative rate,
missed-detection rate at 1% false-positive rate, Brier score. Goals: the
CNN at FPR <= 1% at 1% FNR (braai reports 1.7% / 1.7%, ATLAS 0.72% at 1%);
the ensemble at least as good as its best member on PR-AUC.

Then the CNN scores the real ZTF alerts in ``../shared/data/real/ztf_alerts``
(triplets oriented by ``isdiffpos``) and its AUC against ZTF's own
``drb > 0.5`` is printed. None of these alerts is used for training.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--fields", default="F01,F02,F03,F04")
    parser.add_argument("--nights", type=int, default=8, help="Survey nights from 2026-01-05.")
    parser.add_argument("--real-per-image", type=int, default=250)
    parser.add_argument("--artefacts-per-kind", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ztf", type=Path, default=REPO.parent / "shared" / "data" / "real" / "ztf_alerts"
    )
    args = parser.parse_args()

    os.environ["ASTRID_HOME"] = tempfile.mkdtemp(prefix="astrid-ml-bench-")
    from astrid_assets.ml.metrics import metrics_table
    from astrid_assets.ml.networks import TrainConfig, score_triplets
    from astrid_assets.ml.scoring import Models
    from astrid_assets.ml.trainers import (
        fit_anomaly_run,
        fit_ensemble_run,
        train_realbogus_run,
        train_unet_run,
    )
    from astrid_assets.ml.training_data import build_training_set
    from astrid_assets.resources import mlflow_tracking
    from astrid_assets.science.simulate import SurveyConfig, survey_nights

    fields = args.fields.split(",")
    config = SurveyConfig(seed=20260105, n_fields=len(fields), shape=(args.size, args.size))
    nights = survey_nights(config, args.nights)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    training, patches = build_training_set(
        config,
        fields=fields,
        nights=nights,
        test_fields=fields[-1:],
        test_nights=nights[-1:],
        validation_nights=nights[-2:-1],
        real_per_image=args.real_per_image,
        artefacts_per_kind=args.artefacts_per_kind,
        patches_per_image=24,
        seed=args.seed,
        progress=say,
    )
    built = time.perf_counter() - started
    tracking = mlflow_tracking()
    train_config = TrainConfig(epochs=args.epochs, seed=args.seed)
    cnn = train_realbogus_run(training, train_config, tracking, progress=say)
    unet_config = TrainConfig(epochs=args.epochs, batch_size=16, learning_rate=2e-3, seed=args.seed)
    unet = train_unet_run(training, patches, unet_config, tracking, progress=say)
    anomaly = fit_anomaly_run(training, tracking, seed=args.seed)
    ensemble = fit_ensemble_run(training, Models(cnn.model, unet.model, anomaly.model), tracking)
    table = ensemble.extra["table"]

    balance = training.class_balance()
    print(
        f"{args.size}x{args.size}, fields {','.join(fields)}, nights {nights[0]}..{nights[-1]};"
        f" test: field {fields[-1]} and night {nights[-1]} (never trained on)"
    )
    print(f"training set: {len(training)} rows built in {built:.0f} s; balance {balance}")
    print(f"CNN: {cnn.extra['history'].get('epochs')} epochs, energy {cnn.energy}")
    print()
    print(metrics_table(table))
    fpr = table["realbogus"]["fpr_at_fnr_1pct"]
    print(f"\nCNN FPR at 1% FNR: {fpr:.2%} (goal <= 1%): {'PASS' if fpr <= 0.01 else 'FAIL'}")
    best = max((n for n in table if n != "ensemble"), key=lambda n: table[n]["pr_auc"])
    # A tie is "at least as good": when the ensemble keeps its best member's ranking,
    # the two areas differ only by floating-point rounding (about 1e-16).
    margin = table["ensemble"]["pr_auc"] - table[best]["pr_auc"]
    ok = margin >= -1e-9
    print(
        f"ensemble PR-AUC {table['ensemble']['pr_auc']:.6f} vs best member {best} "
        f"{table[best]['pr_auc']:.6f} (difference {margin:+.2e}): {'PASS' if ok else 'FAIL'}"
    )

    if args.ztf.is_dir():
        from astrid_assets.ml.ztf import alert_files, evaluate_against_drb, read_ztf_alerts

        alerts = read_ztf_alerts(alert_files(args.ztf))
        scores = score_triplets(cnn.model, alerts.triplets, alerts.positive)
        print(f"\nZTF alerts ({len(alerts)}), CNN against drb > 0.5 (none used in training):")
        print(evaluate_against_drb(scores, alerts))


if __name__ == "__main__":
    main()
