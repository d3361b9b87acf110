"""Scoring speed of the real-bogus CNN and the U-Net on this machine's CPU.

Run with ``python benchmarks/bench_ml_speed.py [--n 20000] [--size 2048] [--repeat 3]``.

Goals (LSST's average alert rate is about 300 per second): the CNN scores
>= 1,000 triplets per second, padding, orientation and normalisation
included; the U-Net maps a 2048x2048 difference image in <= 2 s. Untrained
weights: the speed does not depend on them.
"""

import argparse
import os

import numpy as np
from bench_orchestration import best_of  # this folder is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    from astrid_assets.ml.networks import (
        RealBogusNet,
        UNet,
        pick_device,
        probability_map,
        score_triplets,
    )

    device = pick_device("cpu")
    rng = np.random.default_rng(0)
    triplets = rng.normal(size=(args.n, 3, 63, 63)).astype(np.float32)
    positive = rng.random(args.n) > 0.3
    cnn, unet = RealBogusNet(), UNet()
    score_triplets(cnn, triplets[:2048], positive[:2048])  # warm up
    t_cnn = best_of(args.repeat, lambda: score_triplets(cnn, triplets, positive))
    image = rng.normal(size=(2, args.size, args.size)).astype(np.float32)
    probability_map(unet, image[:, :256, :256])
    t_unet = best_of(args.repeat, lambda: probability_map(unet, image))

    rate = args.n / t_cnn
    print(
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__} on {device}, "
        f"{torch.get_num_threads()} threads; best of {args.repeat}"
    )
    print(
        f"CNN  {cnn.parameter_count():,} parameters: {rate:,.0f} triplets/s "
        f"(goal >= 1,000): {'PASS' if rate >= 1000 else 'FAIL'}"
    )
    print(
        f"U-Net {unet.parameter_count():,} parameters: {args.size}x{args.size} map in "
        f"{t_unet:.2f} s (goal <= 2 s): {'PASS' if t_unet <= 2 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
