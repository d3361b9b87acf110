"""The ``astrid`` command.

Heavy imports (astropy, the science modules) happen inside the commands so
that ``astrid --help`` is instant.
"""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
@click.version_option(package_name="astrid-assets")
def main() -> None:
    """AstrID: find astronomical transients in survey images."""


@main.command()
@click.argument("science", type=click.Path(path_type=Path))
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output FITS.")
@click.option("--method", type=click.Choice(["zogy", "classic"]), default="zogy", show_default=True)
@click.option("--threshold", type=float, default=5.0, show_default=True, help="Sigma on S_corr.")
@click.option(
    "--align",
    type=click.Choice(["auto", "wcs", "stars", "none"]),
    default="auto",
    show_default=True,
    help="How to put the science image on the reference grid.",
)
@click.option("--sci-hdu", default=None, help="HDU of the science image (default: first image).")
@click.option("--ref-hdu", default=None, help="HDU of the reference image (default: first image).")
@click.option("--show", default=15, show_default=True, help="Candidates to print.")
def diff(
    science: Path,
    reference: Path,
    out: Path,
    method: str,
    threshold: float,
    align: str,
    sci_hdu: str | None,
    ref_hdu: str | None,
    show: int,
) -> None:
    """Subtract REFERENCE from SCIENCE and detect transients.

    Writes D, SCORR, PSF and MASK image HDUs and a CANDIDATES table to OUT.
    GAIN, RDNOISE and SATURATE are taken from the headers when present; the
    PSF and the noise are measured from the images; the science image is
    aligned onto the reference grid by WCS when both have one.
    """
    from astrid_assets.commands.diff import run_diff_files

    started = time.perf_counter()
    try:
        summary = run_diff_files(
            science,
            reference,
            out,
            method=method,
            threshold=threshold,
            align=align,
            sci_hdu=_hdu(sci_hdu),
            ref_hdu=_hdu(ref_hdu),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    elapsed = time.perf_counter() - started
    click.echo(summary.describe(show=show))
    click.echo(f"wrote {out} in {elapsed:.2f} s")


def _hdu(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--size", default=1024, show_default=True, help="Image side, px.")
@click.option("--reference-epochs", default=5, show_default=True)
@click.option("--seed", type=int, default=None, help="Survey seed (default: the embedded one).")
@click.option("--fakes", default=25, show_default=True, help="Point sources to inject.")
def demo(out: Path, size: int, reference_epochs: int, seed: int | None, fakes: int) -> None:
    """Run one simulated night of the embedded survey and show its candidates."""
    import numpy as np

    from astrid_assets.commands.demo import run_demo

    steps = reference_epochs + 1
    with click.progressbar(length=steps, label="simulated survey", show_pos=True) as bar:

        def progress(message: str) -> None:
            bar.label = message
            if not message.startswith("done"):
                bar.update(1)

        result, table = run_demo(
            out,
            size=size,
            n_reference=reference_epochs,
            seed=seed,
            n_fakes=fakes,
            progress=progress,
        )
    summary = result.products
    truth = result.truth
    quality = result.processed.quality
    limit = quality.limiting_mag
    # What a difference image can show is the change of flux, not the flux.
    visible = np.abs(np.asarray(truth["delta_flux"])) > quality.limiting_flux
    fakes_found = 0 if result.injection is None else int(result.injection.table["recovered"].sum())
    n_fakes = 0 if result.injection is None else len(result.injection.table)
    click.echo(
        f"\n{len(table)} candidates above {summary.candidates.meta.get('threshold', 5.0)} sigma "
        f"(5-sigma limit {limit:.2f} mag): {fakes_found} of {n_fakes} injected fakes, "
        f"{int(np.sum(truth['matched']))} of the simulator's {len(truth)} transients in the "
        f"frame ({int(visible.sum())} changed by more than the limit), "
        f"{result.false_candidates} matching nothing"
    )
    cols = ["id", "x", "y", "ra", "dec", "sign", "score_peak", "snr", "mag", "truth"]
    show = table[cols]
    for col in ("x", "y", "score_peak", "snr", "mag"):
        show[col].info.format = ".2f"
    for col in ("ra", "dec"):
        show[col].info.format = ".5f"
    click.echo("\n".join(show.pformat(max_lines=40, max_width=-1)))
    click.echo(f"\nFiles in {out}: the difference FITS, candidates CSV and a PNG of D.")
