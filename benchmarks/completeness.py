"""Injection and recovery on the simulated survey: completeness, 50% point, false candidates.

Builds a field's reference from its best epochs, then for several nights
injects point sources with the night's true PSF across a range of ideal
difference-image S/N, runs the full chain (calibration, alignment, ZOGY,
detection at 5 sigma on S_corr) and matches the candidates back to the
fakes and to the simulator's truth table.

    .venv/bin/python benchmarks/completeness.py [--size 2048] [--nights 4] [--fakes 300]

Prints the completeness curve, the S/N at 50%, the completeness at
S/N >= 10, false candidates per image, and writes a PNG of the curve.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
from astropy.table import vstack

from astrid_assets.science.injection import completeness_curve
from astrid_assets.science.pipeline import DiffConfig
from astrid_assets.science.simulate import SurveyConfig, field_names, survey_nights
from astrid_assets.science.survey import simulated_reference, subtract_night


def plot_curve(curve, snr: np.ndarray, recovered: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ok = curve.n_injected > 0
    err = np.sqrt(
        np.clip(curve.completeness * (1 - curve.completeness), 1e-4, None)
        / np.maximum(curve.n_injected, 1)
    )
    ax.errorbar(
        curve.bin_centres[ok], curve.completeness[ok], yerr=err[ok], fmt="o", label="measured"
    )
    grid = np.linspace(snr.min(), snr.max(), 300)
    ax.plot(grid, curve.model(grid), label=f"fit: 50% at S/N {curve.snr50:.2f}")
    ax.axvline(5.0, color="gray", ls=":", label="threshold (5 sigma)")
    ax.axhline(0.5, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("ideal difference-image S/N of the injected source")
    ax.set_ylabel("completeness")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--reference-epochs", type=int, default=6)
    parser.add_argument("--nights", type=int, default=4, help="science nights (one image each)")
    parser.add_argument("--fakes", type=int, default=300, help="fakes per image")
    parser.add_argument("--fields", type=int, default=1)
    parser.add_argument("--method", choices=["zogy", "classic"], default="zogy")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args()

    config = SurveyConfig(shape=(args.size, args.size))
    nights = survey_nights(config, args.reference_epochs + args.nights)
    diff_config = DiffConfig(method=args.method)
    tables = []
    false_per_image = []
    started = time.perf_counter()
    for field in field_names(config)[: args.fields]:
        t0 = time.perf_counter()
        reference = simulated_reference(config, field, nights[: args.reference_epochs])
        print(
            f"{field}: reference from {reference.reference.epochs_used} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        for night in nights[args.reference_epochs :]:
            t0 = time.perf_counter()
            res = subtract_night(
                config, field, night, reference, diff_config=diff_config, n_fakes=args.fakes
            )
            inj = res.injection.table
            tables.append(inj)
            false_per_image.append(res.false_candidates)
            c = res.exposure.conditions
            print(
                f"  {night}: seeing {c.fwhm:.2f} px, {len(res.products.candidates)} candidates, "
                f"{int(inj['recovered'].sum())}/{len(inj)} fakes recovered, "
                f"truth {int(res.truth['matched'].sum())}/{len(res.truth)}, "
                f"false {res.false_candidates} ({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    allfakes = vstack(tables)
    masked_fraction = float(np.mean(allfakes["masked"]))
    allfakes = allfakes[~np.asarray(allfakes["masked"])]
    snr = np.asarray(allfakes["snr"])
    recovered = np.asarray(allfakes["recovered"])
    curve = completeness_curve(snr, recovered)
    above10 = curve.completeness_above(snr, recovered, 10.0)
    ok = recovered & np.isfinite(allfakes["measured_flux"])
    flux_bias = np.median(allfakes["measured_flux"][ok] / allfakes["flux"][ok]) - 1
    print()
    print(
        f"date {date.today()}  machine {platform.machine()} {platform.processor() or ''} "
        f"cores {__import__('os').cpu_count()}"
    )
    print(
        f"images {len(false_per_image)} of {args.size}x{args.size}, method {args.method}, "
        f"fakes {len(allfakes)}"
    )
    print(
        f"fakes on masked pixels (streaks, saturated halos, edges), left out: "
        f"{100 * masked_fraction:.1f}%"
    )
    print("S/N bin   injected  recovered  completeness")
    for lo, hi, n, k, c in zip(
        curve.bin_edges[:-1],
        curve.bin_edges[1:],
        curve.n_injected,
        curve.n_recovered,
        curve.completeness,
        strict=True,
    ):
        if n:
            print(f"{lo:4.1f}-{hi:4.1f}  {n:8d}  {k:9d}  {c:11.3f}")
    print(
        f"50% completeness at S/N = {curve.snr50:.2f} (fit: c_max {curve.c_max:.3f}, "
        f"width {curve.width:.2f})"
    )
    print(f"completeness at S/N >= 10: {above10:.3f}")
    print(
        f"false candidates per image: mean {np.mean(false_per_image):.2f}, "
        f"max {max(false_per_image)}  ({false_per_image})"
    )
    print(f"median flux bias of recovered fakes: {100 * flux_bias:+.1f}%")
    print(f"total {time.perf_counter() - started:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"completeness_{args.method}_{args.size}.png"
    plot_curve(curve, snr, recovered, png, f"{args.method}, {len(false_per_image)} images")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
