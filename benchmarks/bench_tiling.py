"""Whole vs tiled fusion: how far ``Fuser.fuse(..., tile=N)`` is from ``Fuser.fuse(...)``.

For every pair and tile size: max / mean / 99th percentile of ``|tiled - whole|`` in 8-bit
grey levels over the pixels more than 16 px from the image border (the measure of
``docs/fuse.md``, "Whole vs tiled"), the mean grey level of both images and the time of
both calls. Printed as a Markdown table.

Usage::

    python benchmarks/bench_tiling.py [--weights FILE] [--tiles 256,512] [--threads 1]
        [--pairs msrs/00095D,msrs/00012N,llvip/010006] [--data ../shared/data]

A pair ``DATASET/STEM`` is read from ``DATA/DATASET/{ir,vi}/STEM.*`` (the shared data's
layout); the overlap is ``tile // 4``. The bundled weights are used without ``--weights``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from moefusion.data import load_pair
from moefusion.fuser import Fuser

BORDER = 16
DEFAULT_PAIRS = "msrs/00095D,msrs/00012N,llvip/010006"


def find_image(folder: Path, stem: str) -> Path:
    """The one file ``folder/stem.*``."""
    hits = sorted(folder.glob(f"{stem}.*"))
    if not hits:
        raise SystemExit(f"no {stem}.* in {folder}")
    return hits[0]


def difference(tiled: np.ndarray, whole: np.ndarray) -> tuple[float, float, float]:
    """``(max, mean, p99)`` of ``|tiled - whole|`` in grey levels, border left out."""
    d = np.abs(tiled - whole)[BORDER:-BORDER, BORDER:-BORDER] * 255.0
    return float(d.max()), float(d.mean()), float(np.percentile(d, 99))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--tiles", default="256,512")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fuser = (
        Fuser.pretrained(device="cpu")
        if args.weights is None
        else Fuser.from_file(args.weights, device="cpu")
    )
    tiles = [int(t) for t in args.tiles.split(",")]
    print(
        "| pair | size | tile (overlap) | tiles | max / mean / p99 | mean tiled / whole | s tiled / whole |"
    )
    print("|---|---|---|---|---|---|---|")
    for item in args.pairs.split(","):
        dataset, stem = item.split("/")
        root = args.data / dataset
        pair = load_pair(find_image(root / "ir", stem), find_image(root / "vi", stem))
        start = time.perf_counter()
        whole = fuser.fuse(pair.ir, pair.vi)
        t_whole = time.perf_counter() - start
        h, w = whole.shape
        for tile in tiles:
            start = time.perf_counter()
            res = fuser.fuse(pair.ir, pair.vi, tile=tile, overlap=tile // 4, return_details=True)
            t_tiled = time.perf_counter() - start
            mx, mean, p99 = difference(res.fused, whole)
            print(
                f"| {dataset} `{stem}` | {w}x{h} | {tile} ({tile // 4}) | {res.tiles} | "
                f"{mx:.1f} / {mean:.2f} / {p99:.1f} | "
                f"{res.fused.mean() * 255:.1f} / {whole.mean() * 255:.1f} | "
                f"{t_tiled:.1f} / {t_whole:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
