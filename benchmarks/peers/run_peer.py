#!/usr/bin/env python
"""Run one peer image-subtraction package on an aligned image pair.

Runs INSIDE the peers' virtualenv (``.venv-peers``, built by
``setup_peers.sh``), never in AstrID's own environment::

    .venv-peers/bin/python benchmarks/peers/run_peer.py --method properimage \\
        --sci sci.fits --ref ref.fits --out diff_properimage.fits --timeout 300

Writes OUT with the extensions ``D`` (the peer's difference image, oriented
so that a source that brightened in the science image is positive) and,
where the peer computes one, ``SCORR`` (its ZOGY detection statistic
S_corr).  sfft has no detection statistic: only ``D`` is written.

Prints exactly one JSON line on stdout::

    {"method": ..., "status": "ok"|"timeout"|"error"|"not_installed",
     "seconds": ..., "peak_rss_mb": ..., "version": ..., ...}

``seconds`` is the wall time of the subtraction alone: imports, reading the
input FITS files, copying them into a scratch directory and writing OUT are
excluded.  Where a peer only takes file names (sfft, zogyp, PyZOGY) its own
reading and writing of those files is inside the timed call and cannot be
taken out.  ``peak_rss_mb`` is the peak resident memory of the worker
process; ``peak_rss_children_mb`` that of the largest external program it
ran (SExtractor, PSFEx).

The peer runs in a child process in its own session; with ``--timeout`` the
whole process group is killed when the limit passes and the JSON says
``"status": "timeout"``.  Everything the peer prints goes to stderr.

Exit status: 0 ok, 1 error, 2 timeout, 3 peer not installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

METHODS = ("properimage", "sfft", "zogyp", "pyzogy")
DIST_NAME = {"properimage": "properimage", "sfft": "sfft", "zogyp": "zogyp", "pyzogy": "PyZOGY"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Run one peer image-subtraction package on an aligned "
        "image pair (see the module docstring)."
    )
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("--sci", required=True, help="science (new) image FITS")
    ap.add_argument("--ref", required=True, help="reference image FITS")
    ap.add_argument("--out", required=True, help="output FITS (HDUs D, SCORR)")
    ap.add_argument(
        "--sci-psf",
        help="science PSF stamp FITS (PyZOGY only; the other peers measure the PSF themselves)",
    )
    ap.add_argument("--ref-psf", help="reference PSF stamp FITS (PyZOGY only)")
    ap.add_argument(
        "--sci-sigma",
        type=float,
        help="science background rms, ADU (PyZOGY only; the other peers measure it themselves)",
    )
    ap.add_argument("--ref-sigma", type=float, help="reference background rms, ADU (PyZOGY only)")
    ap.add_argument(
        "--sci-gain", type=float, help="science gain e-/ADU (default: header GAIN, else 1)"
    )
    ap.add_argument(
        "--ref-gain", type=float, help="reference gain e-/ADU (default: header GAIN, else 1)"
    )
    ap.add_argument(
        "--background-subtracted",
        action="store_true",
        help="the inputs are already sky-subtracted (sfft then skips its own sky subtraction)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for peers that take a thread count "
        "(sfft's Numpy backend); default: all cores",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds before the peer is killed (default 300; 0 = no limit)",
    )
    ap.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the peer's main call, VALUE a "
        "Python literal (e.g. --opt beta=False for "
        "properimage, --opt KerPolyOrder=0 for sfft); "
        "repeatable",
    )
    ap.add_argument(
        "--workdir", help="scratch directory (default: a new temporary one, removed afterwards)"
    )
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument(
        "--log-level",
        default="WARNING",
        help="Python logging level for the peer's own log "
        "(e.g. INFO shows properimage's phase timings)",
    )
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def parse_opts(pairs):
    opts = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep:
            raise SystemExit(f"--opt needs KEY=VALUE, got {p!r}")
        try:
            opts[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            opts[key] = val
    return opts


def peer_version(method):
    from importlib import metadata

    try:
        return metadata.version(DIST_NAME[method])
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------
# The peers.  Each takes the common context and returns
# (D, SCORR or None, seconds, extra-dict).  Arrays are numpy row-major
# (y, x), the same orientation as the input FITS data.
# ---------------------------------------------------------------------------


def _gain(cli_value, header):
    if cli_value is not None:
        return float(cli_value)
    return float(header.get("GAIN", 1.0))


def run_properimage(ctx):
    """ProperImage's ZOGY (``properimage.operations.subtract``).

    Takes the raw images (it fits and subtracts the sky with sep itself) and
    estimates both PSFs itself (by default a single Gaussian fitted to
    selected stars, ``fitted_psf=True``); our PSF files are not used.  The
    data are multiplied by the gain inside SingleImage.  Default keywords of
    subtract() are used (beta=True, shift=True: it fits the flux ratio and a
    sub-pixel shift by least squares over full-frame FFTs, which is most of
    its run time) unless overridden with --opt.
    """
    import numpy as np
    from properimage.operations import subtract
    from properimage.single_image import SingleImage

    sci, ref = ctx["sci"], ctx["ref"]
    g_sci = _gain(ctx["args"].sci_gain, ctx["sci_hdr"])
    g_ref = _gain(ctx["args"].ref_gain, ctx["ref_hdr"])
    kw = dict(align=False)
    kw.update(ctx["opts"])
    t0 = time.perf_counter()
    with SingleImage(ref, gain=g_ref) as r_img, SingleImage(sci, gain=g_sci) as n_img:
        D, _psf, S_corr, _mask = subtract(ref=r_img, new=n_img, **kw)
        D = np.asarray(D.real if np.iscomplexobj(D) else D)
        S_corr = np.asarray(S_corr)
    seconds = time.perf_counter() - t0
    return (
        D,
        S_corr,
        seconds,
        {
            "call": f"properimage.operations.subtract"
            f"({', '.join(f'{k}={v!r}' for k, v in kw.items())})"
        },
    )


def run_sfft(ctx):
    """sfft's sparse-field pipeline (``Easy_SparsePacket.ESP``) on the CPU
    ('Numpy') backend.

    sfft needs SKY-SUBTRACTED inputs; unless --background-subtracted is
    given, a sep background map (64 px mesh) is subtracted first, and that
    time is counted in ``seconds`` (and reported as ``seconds_prep``).  It
    selects stars with SExtractor (GAIN and ESATUR header keywords), solves
    a spatially varying kernel (KerPolyOrder=2) and convolves the sharper
    image; it measures no PSF and writes no detection statistic.  The first
    run also JIT-compiles its numba kernels (cached in the venv afterwards).
    """
    import numpy as np
    from astropy.io import fits
    from sfft.EasySparsePacket import Easy_SparsePacket

    args = ctx["args"]
    sci = ctx["sci"].astype(np.float64)
    ref = ctx["ref"].astype(np.float64)
    t0 = time.perf_counter()
    if not args.background_subtracted:
        import sep

        sci = sci - sep.Background(np.ascontiguousarray(sci), bw=64, bh=64).back()
        ref = ref - sep.Background(np.ascontiguousarray(ref), bw=64, bh=64).back()
    t_prep = time.perf_counter() - t0

    paths = {}
    for name, data, hdr, g in (
        ("sci", sci, ctx["sci_hdr"], args.sci_gain),
        ("ref", ref, ctx["ref_hdr"], args.ref_gain),
    ):
        h = fits.Header()
        for key in (
            "CTYPE1",
            "CTYPE2",
            "CRVAL1",
            "CRVAL2",
            "CRPIX1",
            "CRPIX2",
            "CD1_1",
            "CD1_2",
            "CD2_1",
            "CD2_2",
        ):
            if key in hdr:
                h[key] = hdr[key]
        h["GAIN"] = _gain(g, hdr)
        satur = hdr.get("ESATUR", hdr.get("SATURATE"))
        h["ESATUR"] = float(satur) if satur is not None else 1.0e30
        paths[name] = os.path.join(ctx["workdir"], f"{name}_skysub.fits")
        fits.PrimaryHDU(data.astype(np.float32), h).writeto(paths[name], overwrite=True)
    diff_path = os.path.join(ctx["workdir"], "sfft_diff.fits")
    kw = dict(
        FITS_DIFF=diff_path,
        ForceConv="AUTO",
        GKerHW=None,
        KerPolyOrder=2,
        BGPolyOrder=0,
        ConstPhotRatio=True,
        BACKEND_4SUBTRACT="Numpy",
        NUM_CPU_THREADS_4SUBTRACT=int(args.threads),
        VERBOSE_LEVEL=1,
    )
    kw.update(ctx["opts"])
    t1 = time.perf_counter()
    Easy_SparsePacket.ESP(FITS_REF=paths["ref"], FITS_SCI=paths["sci"], **kw)
    t_call = time.perf_counter() - t1
    with fits.open(diff_path) as hl:
        D = np.asarray(hl[0].data, dtype=np.float32)
        convd = hl[0].header.get("CONVD")
        kerhw = hl[0].header.get("KERHW")
    return (
        D,
        None,
        t_prep + t_call,
        {
            "seconds_prep": round(t_prep, 3),
            "convolved": convd,
            "kernel_half_width": kerhw,
            "call": "sfft.EasySparsePacket.Easy_SparsePacket.ESP("
            + ", ".join(f"{k}={v!r}" for k, v in kw.items() if k != "FITS_DIFF")
            + ")",
        },
    )


def run_zogyp(ctx):
    """zogyp's ZOGY (``zogyp.zip.run_ZOGY``).

    Takes file names of the raw images; it measures the background itself
    (sep, 16 px mesh), models both PSFs with SExtractor + PSFEx (binaries
    `sextractor`/`sex` and `psfex` on PATH) and fits the flux ratio from
    PSFEx normalisations.  It writes everything under ./Zoutput of the
    current directory, so it runs in the scratch directory on copies of the
    inputs.  With fewer than 6 cores it runs serially.
    """
    import glob

    import numpy as np
    from astropy.io import fits

    # zogyp 1.6.3 still uses the alias np.int (removed in numpy 1.24) to size
    # its PSF; restore it as the builtin it always meant.  (Its other numpy-1
    # dependency, ndarray.newbyteorder, is why the venv pins numpy<2.)
    if "int" not in np.__dict__:
        vars(np)["int"] = int
    from zogyp.zip import run_ZOGY

    wd = ctx["workdir"]
    shutil.copyfile(ctx["args"].sci, os.path.join(wd, "sci.fits"))
    shutil.copyfile(ctx["args"].ref, os.path.join(wd, "ref.fits"))
    kw = dict(outname="data", align=False)
    kw.update(ctx["opts"])
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        t0 = time.perf_counter()
        run_ZOGY("sci.fits", "ref.fits", **kw)
        seconds = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    name = kw["outname"]
    d_files = sorted(glob.glob(os.path.join(wd, "Zoutput", f"{name}_D*.fits")))
    s_files = sorted(glob.glob(os.path.join(wd, "Zoutput", f"{name}_Scorr*.fits")))
    if len(d_files) != 1 or len(s_files) != 1:
        raise RuntimeError(
            f"zogyp wrote {d_files} {s_files}; expected one "
            "D and one Scorr image (sub_imagex=sub_imagey=1)"
        )
    D = np.asarray(fits.getdata(d_files[0]), dtype=np.float32)
    S = np.asarray(fits.getdata(s_files[0]), dtype=np.float32)
    return (
        D,
        S,
        seconds,
        {"call": "zogyp.zip.run_ZOGY(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")"},
    )


def run_pyzogy(ctx):
    """PyZOGY (``PyZOGY.subtract.run_subtraction``), file based, with the
    given PSF files.  PyZOGY is not on PyPI, so this path only runs where it
    was installed by hand; keywords the installed version does not accept
    are dropped."""
    import inspect

    import numpy as np
    from astropy.io import fits
    from PyZOGY.subtract import run_subtraction

    a = ctx["args"]
    if not (a.sci_psf and a.ref_psf):
        raise SystemExit("pyzogy needs --sci-psf and --ref-psf")
    wd = ctx["workdir"]
    out_d = os.path.join(wd, "pyzogy_D.fits")
    out_s = os.path.join(wd, "pyzogy_S.fits")
    kw = dict(output=out_d, matched_filter=out_s, photometry=False, normalization="science")
    if a.sci_sigma is not None:
        kw["science_variance"] = a.sci_sigma**2
    if a.ref_sigma is not None:
        kw["reference_variance"] = a.ref_sigma**2
    kw.update(ctx["opts"])
    accepted = inspect.signature(run_subtraction).parameters
    kw = {k: v for k, v in kw.items() if k in accepted}
    t0 = time.perf_counter()
    run_subtraction(a.sci, a.ref, a.sci_psf, a.ref_psf, **kw)
    seconds = time.perf_counter() - t0
    D = np.asarray(fits.getdata(out_d), dtype=np.float32)
    S = np.asarray(fits.getdata(out_s), dtype=np.float32) if os.path.exists(out_s) else None
    return D, S, seconds, {"call": "PyZOGY.subtract.run_subtraction(...)"}


RUNNERS = {
    "properimage": run_properimage,
    "sfft": run_sfft,
    "zogyp": run_zogyp,
    "pyzogy": run_pyzogy,
}
IMPORTS = {
    "properimage": "properimage.operations",
    "sfft": "sfft.EasySparsePacket",
    "zogyp": "zogyp.zip",
    "pyzogy": "PyZOGY.subtract",
}


# ---------------------------------------------------------------------------
# Worker (child process) and supervisor (parent process).
# ---------------------------------------------------------------------------


def _rss_mb():
    import resource

    # Linux reports ru_maxrss in KiB.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return round(own, 1), round(kids, 1)


def worker(args):
    result = {
        "method": args.method,
        "status": "error",
        "seconds": None,
        "peak_rss_mb": None,
        "version": peer_version(args.method),
    }

    def finish(code):
        own, kids = _rss_mb()
        result["peak_rss_mb"] = own
        result["peak_rss_children_mb"] = kids
        with open(args._result, "w") as fh:
            json.dump(result, fh)
        return code

    # zogyp and sfft call SExtractor as `sex`/`sextractor`; setup_peers.sh
    # puts those names in the venv's bin/.
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    import logging

    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    import importlib

    try:
        importlib.import_module(IMPORTS[args.method])
    except ImportError as exc:
        result["status"] = "not_installed"
        result["error"] = f"{type(exc).__name__}: {exc}"
        return finish(3)

    import numpy as np
    from astropy.io import fits

    try:
        opts = parse_opts(args.opt)
        sci, sci_hdr = fits.getdata(args.sci, header=True)
        ref, ref_hdr = fits.getdata(args.ref, header=True)
        sci = np.asarray(sci, dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if sci.shape != ref.shape:
            raise ValueError(f"shapes differ: sci {sci.shape} ref {ref.shape}")
        # The supervisor made (and removes) the scratch directory.
        workdir = os.path.abspath(args.workdir)
        os.makedirs(workdir, exist_ok=True)
        ctx = dict(
            args=args,
            opts=opts,
            sci=sci,
            ref=ref,
            sci_hdr=sci_hdr,
            ref_hdr=ref_hdr,
            workdir=workdir,
        )
        D, S, seconds, extra = RUNNERS[args.method](ctx)
        if args.keep_workdir:
            result["workdir"] = workdir
        result.update(extra)
        result["seconds"] = round(seconds, 3)

        prim = fits.PrimaryHDU()
        prim.header["PEER"] = args.method
        prim.header["PEERVER"] = str(result["version"])
        prim.header["SECONDS"] = (result["seconds"], "subtraction wall time")
        hdus = [prim, fits.ImageHDU(np.asarray(D, dtype=np.float32), name="D")]
        if S is not None:
            hdus.append(fits.ImageHDU(np.asarray(S, dtype=np.float32), name="SCORR"))
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        fits.HDUList(hdus).writeto(args.out, overwrite=True)
        result["out"] = os.path.abspath(args.out)
        result["hdus"] = ["D"] + (["SCORR"] if S is not None else [])
        result["status"] = "ok"
        return finish(0)
    except BaseException as exc:  # report, never hang the supervisor
        import traceback

        traceback.print_exc(file=sys.stderr)
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        return finish(1)


def supervise(args, argv):
    fd, result_path = tempfile.mkstemp(prefix="peer_result_", suffix=".json")
    os.close(fd)
    os.unlink(result_path)
    own_workdir = args.workdir is None
    workdir = (
        tempfile.mkdtemp(prefix=f"peer_{args.method}_")
        if own_workdir
        else os.path.abspath(args.workdir)
    )
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--_result", result_path]
    if own_workdir:
        cmd += ["--workdir", workdir]
    t0 = time.perf_counter()
    # The worker's stdout goes to our stderr so that stdout carries only
    # the JSON line.  Its own session lets a timeout kill the whole group
    # (SExtractor/PSFEx and multiprocessing workers included).
    # TMPDIR points into the scratch directory so that temporary files the
    # peers make (properimage's PSF database, sfft's SExtractor runs) are
    # removed with it, even after a timeout kill.
    env = dict(os.environ, TMPDIR=workdir)
    proc = subprocess.Popen(cmd, stdout=sys.stderr.fileno(), env=env, start_new_session=True)
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    status = None
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.perf_counter() - t0

    if status == "timeout":
        result = {
            "method": args.method,
            "status": "timeout",
            "seconds": None,
            "peak_rss_mb": None,
            "version": peer_version(args.method),
            "timeout_s": timeout,
            "error": f"exceeded --timeout {timeout:g} s",
        }
        code = 2
    elif os.path.exists(result_path):
        with open(result_path) as fh:
            result = json.load(fh)
        code = proc.returncode
    else:
        result = {
            "method": args.method,
            "status": "error",
            "seconds": None,
            "peak_rss_mb": None,
            "version": peer_version(args.method),
            "error": f"worker died with exit status {proc.returncode}",
        }
        code = 1
    if os.path.exists(result_path):
        os.unlink(result_path)
    if own_workdir and not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    result["process_wall_s"] = round(wall, 3)
    print(json.dumps(result), flush=True)
    return code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._result:
        return worker(args)
    return supervise(args, argv)


if __name__ == "__main__":
    sys.exit(main())
