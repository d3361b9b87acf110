"""Machine learning on candidates: training data from injection, the real-bogus CNN,
the U-Net, the feature anomaly detectors, their ensemble and the metrics that suit
rare events. Plain Python (no Dagster); the assets are in :mod:`astrid_assets.defs.ml`.

torch and mlflow are imported inside functions or in modules that the code location
does not import at load time: every Dagster step re-imports the code location.
"""
