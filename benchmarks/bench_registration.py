"""Registration accuracy on the sample pairs with known misalignments, as a Markdown table.

Usage: ``python benchmarks/bench_registration.py [--methods ecc,features] [--set small,large]``

Each of the five real pairs in ``samples/`` (LLVIP downscaled to 640x512) is turned into a
misaligned one with :func:`moefusion.registration.simulate_misalignment`: the infrared
image cropped by a margin (20 % of the short side), the visible one moved by a known
shift / rotation / scale. The truth is the known warp composed with what the same method
finds on the *unmoved* crop (the sample pairs are registered only to a few pixels
themselves), so the error measures how well the applied warp is recovered. Error: the
largest distance between the estimated and the true position of the four corners of the
infrared frame, in pixels; a failure is a raised ``RegistrationError`` or an error above
10 px. "unmoved: corners moved" is how far the registration of the unmoved crop moves
the frame's corners (per method): the pair's own misregistration, as each method sees
it. Also reports the ECC correlation of unrelated pairs (the refusal threshold).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from moefusion.registration import (
    RegistrationError,
    corner_error,
    estimate_transform,
    simulate_misalignment,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
STEMS = ("00012N.png", "00095D.png", "FLIR_00006.jpg", "FLIR_05016.jpg", "010006.jpg")
#: ``--source tno``: frames of the two TNO sequences (360x270, little structure)
TNO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tno_extra"
TNO_STEMS = tuple(
    f"{s}.bmp"
    for s in ("seq_duine_7400", "seq_duine_7406", "seq_duine_7412", "seq_tree_4900",
              "seq_tree_4906", "seq_tree_4912")
)  # fmt: skip

#: name -> (shift, degrees, scale)
SETS: dict[str, list[tuple[str, tuple[float, float], float, float]]] = {
    "small": [
        ("shift 7 px", (7.0, 0.0), 0.0, 1.0),
        ("shift -7 px (y)", (0.0, -7.0), 0.0, 1.0),
        ("rotation 2 deg", (0.0, 0.0), 2.0, 1.0),
        ("rotation -2 deg", (0.0, 0.0), -2.0, 1.0),
        ("scale +3 %", (0.0, 0.0), 0.0, 1.03),
        ("scale -3 %", (0.0, 0.0), 0.0, 0.97),
        ("all three", (7.0, -5.0), 2.0, 1.03),
    ],
    "large": [
        ("shift 25 px", (25.0, -15.0), 0.0, 1.0),
        ("rotation 8 deg", (0.0, 0.0), 8.0, 1.0),
        ("scale +10 %", (0.0, 0.0), 0.0, 1.10),
        ("all three", (20.0, 10.0), -6.0, 0.92),
    ],
}
FAIL_PX = 10.0


def load(stem: str, root: Path = SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    ir = np.asarray(Image.open(root / "ir" / stem).convert("L"))
    vi = np.asarray(Image.open(root / "vi" / stem).convert("L"))
    if ir.shape[1] > 700:  # LLVIP 1280x1024: the benchmark's time budget
        ir = cv2.resize(ir, (640, 512), interpolation=cv2.INTER_AREA)
        vi = cv2.resize(vi, (640, 512), interpolation=cv2.INTER_AREA)
    return ir, vi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ecc,features")
    ap.add_argument("--model", default="affine")
    ap.add_argument("--set", default="small,large", help="comma-separated: small, large")
    ap.add_argument(
        "--source",
        choices=("samples", "tno"),
        default="samples",
        help="the five sample pairs, or six frames of the TNO sequences in ../shared/data",
    )
    args = ap.parse_args()
    methods = args.methods.split(",")
    sets = args.set.split(",")
    if args.source == "tno":
        pairs = {s: load(s, TNO) for s in TNO_STEMS}
    else:
        pairs = {s: load(s) for s in STEMS}

    print(f"machine: {platform.processor() or platform.machine()}, OpenCV {cv2.__version__}\n")
    for name in sets:
        cases = SETS[name]
        print(f"### {name} misalignments, model {args.model}\n")
        header = "| pair | unmoved: corners moved | " + " | ".join(
            f"{c[0]} ({m})" for m in methods for c in cases
        )
        rows: dict[str, list[float]] = {m: [] for m in methods}
        lines = []
        times: dict[str, list[float]] = {m: [] for m in methods}
        for stem, (ir, vi) in pairs.items():
            margin = int(0.2 * min(ir.shape))
            cells = []
            moved = []
            for method in methods:
                ir0, vi0, _ = simulate_misalignment(ir, vi, margin=margin)
                try:
                    base = estimate_transform(ir0, vi0, method, args.model).matrix
                    moved.append(f"{corner_error(base, np.eye(3), ir0.shape):.1f}")
                except RegistrationError:
                    base = None
                    moved.append("fail")
                for _, shift, deg, scale in cases:
                    irc, viw, known = simulate_misalignment(
                        ir, vi, shift=shift, degrees=deg, scale=scale, margin=margin
                    )
                    t0 = time.perf_counter()
                    try:
                        reg = estimate_transform(irc, viw, method, args.model)
                        err = (
                            corner_error(reg.matrix, known @ base, irc.shape)
                            if base is not None
                            else float("inf")
                        )
                    except RegistrationError:
                        err = float("inf")
                    times[method].append(time.perf_counter() - t0)
                    rows[method].append(err)
                    cells.append("fail" if err > FAIL_PX else f"{err:.2f}")
            lines.append(f"| {Path(stem).stem} | {' / '.join(moved)} | " + " | ".join(cells) + " |")
        print(header + " |")
        print("|---" * (2 + len(methods) * len(cases)) + "|")
        print("\n".join(lines))
        print()
        for method in methods:
            errs = rows[method]
            ok = [e for e in errs if e <= FAIL_PX]
            within = sum(e <= 1.0 for e in errs)
            print(
                f"- {method}: {within}/{len(errs)} within 1 px, {len(ok)}/{len(errs)} "
                f"within {FAIL_PX:g} px; median error of those "
                f"{statistics.median(ok) if ok else float('nan'):.2f} px; "
                f"median {statistics.median(times[method]):.2f} s per estimate"
            )
        print()

    if args.source == "tno":
        return  # consecutive sequence frames show the same scene: no unrelated pairs
    # the refusal threshold: correlation of pairs that do not show the same scene
    ccs = []
    stems = list(pairs)
    for i, a in enumerate(stems):
        b = stems[(i + 1) % len(stems)]
        ir, vi = pairs[a][0], cv2.resize(pairs[b][1], pairs[a][0].shape[::-1])
        try:
            ccs.append(estimate_transform(ir, vi, "ecc", args.model, min_confidence=-1).confidence)
        except RegistrationError:
            ccs.append(float("nan"))
    print("ECC correlation of unrelated pairs: " + ", ".join(f"{c:.3f}" for c in ccs))


if __name__ == "__main__":
    main()
