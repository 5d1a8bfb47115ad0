"""Flicker of fused video against ``--temporal-smoothing F``, as a Markdown table.

Usage: ``python benchmarks/bench_video.py [--factors 0,0.3,0.5,0.7,0.9] [--weights FILE]``

The real sequences of ``../shared/data/tno_extra`` (``seq_duine_7400..7422``, 23 frames,
and ``seq_tree_4900..4913``, 14 frames; 360x270, see its PROVENANCE.md) are fused frame
by frame with the bundled weights (or ``--weights``), as ``moefusion fuse`` does on a
video, inside :meth:`moefusion.Fuser.temporal_smoothing`; the frames are measured before
any video encoding, so the codec adds nothing. Per frame transition
(:class:`moefusion.temporal.FlickerMeter`):

* change: mean absolute frame-to-frame difference, 8-bit grey levels, of the fused
  video and of each source; excess = fused - max(infrared, visible);
* switches: changes of the set of selected experts, per 100 transitions, summed over the
  three gates (MoLE foreground, MoLE background, MoGE);
* gate change: half the L1 distance between consecutive gate-weight vectors, mean over
  the three gates (0 = identical weights, 1 = disjoint experts).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moefusion.fuser import Fuser
from moefusion.temporal import FlickerMeter

TNO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tno_extra"
SEQUENCES = ("seq_duine", "seq_tree")


def frames(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    ir = sorted((TNO / "ir").glob(f"{name}_*.bmp"))
    out = []
    for p in ir:
        a = np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255
        b = np.asarray(Image.open(TNO / "vi" / p.name).convert("L"), dtype=np.float32) / 255
        out.append((a, b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", default="0,0.3,0.5,0.7,0.9")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not TNO.is_dir():
        raise SystemExit(f"{TNO} not found")
    factors = [float(f) for f in args.factors.split(",")]
    fuser = (
        Fuser.from_file(args.weights, device=args.device)
        if args.weights
        else Fuser.pretrained(device=args.device)
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), device {fuser.device}\n"
    )
    print(
        "| sequence | frames | F | fused change | IR change | VI change | excess | "
        "switches / 100 (fg, bg, moge) | gate change |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in SEQUENCES:
        pairs = frames(name)
        for factor in factors:
            meter = FlickerMeter()
            with fuser.temporal_smoothing(factor):
                for ir, vi in pairs:
                    res = fuser.fuse_arrays([ir], [vi], details=True)[0]
                    meter.add(res.fused, ir, vi, res.gates)
            s = meter.summary()
            gates = ("mole_fg", "mole_bg", "moge")
            per_gate = ", ".join(f"{s[f'switches_per_100_{g}']:.0f}" for g in gates)
            gate_change = np.mean([s[f"gate_change_{g}"] for g in gates])
            print(
                f"| {name} | {len(pairs)} | {factor:g} | {s['fused']:.3f} | {s['ir']:.3f} | "
                f"{s['vi']:.3f} | {s['excess']:+.3f} | {s['switches_per_100']:.0f} "
                f"({per_gate}) | {gate_change:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
