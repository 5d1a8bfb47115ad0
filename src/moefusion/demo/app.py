"""The demo's web page (Gradio): lays out what :mod:`moefusion.demo.logic` computes.

Imported only by ``moefusion demo``, the one part of the package that needs gradio
(``pip install -e ".[demo]"``). The page loads nothing from the internet: the default
theme's fonts ship with gradio and analytics are off.
"""

from __future__ import annotations

import os

# before gradio is imported: it reads this once, and a local demo must not phone home
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import sys
import time
from pathlib import Path
from typing import Any

import gradio as gr

from moefusion.baselines import BASELINES
from moefusion.data.io import IMAGE_EXTENSIONS
from moefusion.demo.logic import (
    DEFAULT_BASELINE,
    METHOD_NAME,
    Demo,
    DemoOutcome,
    gate_bars,
    metrics_markdown,
)

TITLE = "MoE-Fusion demo"
INTRO = (
    "Infrared-visible fusion with MoE-Fusion (Cao et al., ICCV 2023). Upload an infrared "
    "and a visible image of the same scene (aligned, the same size; any format "
    "`moefusion fuse` reads), or pick a sample pair, then press **Fuse**."
)
#: Elements the browser test (and anyone scripting the page) finds by id.
IDS = {
    "ir": "demo-ir",
    "vi": "demo-vi",
    "sample": "demo-sample",
    "fuse": "demo-fuse",
    "status": "demo-status",
    "fused": "demo-fused",
    "gates": "demo-gates",
    "metrics": "demo-metrics",
    "downloads": "demo-downloads",
}
#: Number of outputs of :func:`_outputs`, in the order the page lists them.
_N_OUTPUTS = 11
_CSS = "#demo-status p { font-size: 1.05em; } #demo-metrics table { font-size: 0.9em; }"


def _outputs(outcome: DemoOutcome) -> tuple[Any, ...]:
    """One outcome -> the values of the page's outputs (all empty for an error)."""
    if outcome.result is None:
        return (f"**Error:** {outcome.message}",) + (None,) * (_N_OUTPUTS - 1)
    r = outcome.result
    p = r.panels()
    table = f"{_metrics_caption(r.baseline)}\n\n{metrics_markdown(r.metrics)}"
    return (
        outcome.message,
        p["ir"],
        p["vi"],
        p["fused"],
        p["fused_color"],
        (p["vi"], p["fused_color"]),
        gate_bars(r.fusion.gates),
        p["attention"],
        p["baseline"],
        table,
        [str(f) for f in outcome.files],
    )


def _metrics_caption(baseline: str) -> str:
    return (
        f"The eight metrics of the paper's Table 1 (paper convention, 8-bit gray images) of "
        f"`{METHOD_NAME}` and `{baseline}`; the better of the two in bold (all higher is "
        "better)."
    )


def build(demo: Demo) -> gr.Blocks:
    """The page for ``demo``: inputs, the four images, the slider, gates, attention,
    baseline comparison, metrics and downloads."""

    def fuse(ir: str | None, vi: str | None, baseline: str, resize: bool) -> tuple[Any, ...]:
        try:
            return _outputs(demo.run(ir, vi, baseline, resize=resize))
        except Exception as exc:  # the page shows one line, never a traceback
            print(f"moefusion demo: unexpected error: {exc!r}", file=sys.stderr)
            return _outputs(DemoOutcome(message=f"unexpected error: {' '.join(str(exc).split())}"))

    # uploads and results are removed from gradio's cache an hour after they were made
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            ir_file = gr.File(
                label="infrared image", file_types=list(IMAGE_EXTENSIONS), elem_id=IDS["ir"]
            )
            vi_file = gr.File(
                label="visible image", file_types=list(IMAGE_EXTENSIONS), elem_id=IDS["vi"]
            )
            with gr.Column():
                sample = gr.Dropdown(
                    choices=sorted(demo.samples),
                    value=None,
                    label="or pick a sample pair",
                    interactive=True,
                    elem_id=IDS["sample"],
                )
                baseline = gr.Dropdown(
                    choices=list(BASELINES),
                    value=DEFAULT_BASELINE,
                    label="classical baseline to compare",
                )
                resize = gr.Checkbox(
                    value=False, label="resize the visible image to the infrared one"
                )
                button = gr.Button("Fuse", variant="primary", elem_id=IDS["fuse"])
        status = gr.Markdown(elem_id=IDS["status"])
        with gr.Row(equal_height=True):
            ir_img = _image("infrared")
            vi_img = _image("visible")
            fused_img = _image("fused (gray)", elem_id=IDS["fused"])
            color_img = _image("fused (colour)")
        with gr.Row(equal_height=True):
            slider = gr.ImageSlider(
                label="swipe: visible | fused (colour)",
                format="png",
                interactive=False,
                buttons=["download", "fullscreen"],
            )
            attention_img = _image("attention map over the fused image (0 blue .. 1 red)")
        gr.Markdown(
            "**Gate weights of each mixture**: coloured bars are the experts that fired "
            "(the gate's top-K), grey ones stayed idle."
        )
        gates_img = _image("gate weights", show_label=False, elem_id=IDS["gates"])
        with gr.Row():
            baseline_img = _image("baseline", scale=1)
            with gr.Column(scale=2):
                metrics = gr.Markdown(elem_id=IDS["metrics"])
                downloads = gr.File(
                    label="download the fused images",
                    file_count="multiple",
                    interactive=False,
                    elem_id=IDS["downloads"],
                )

        inputs = [ir_file, vi_file, baseline, resize]
        outputs = [
            status,
            ir_img,
            vi_img,
            fused_img,
            color_img,
            slider,
            gates_img,
            attention_img,
            baseline_img,
            metrics,
            downloads,
        ]
        assert len(outputs) == _N_OUTPUTS
        button.click(fuse, inputs, outputs)
        baseline.change(fuse, inputs, outputs)
        sample.input(demo.sample, [sample], [ir_file, vi_file]).then(fuse, inputs, outputs)
    return page


def _image(label: str, **kwargs: Any) -> gr.Image:
    """An output image: lossless PNG, download and full-screen buttons (no share button:
    the demo is local)."""
    return gr.Image(
        label=label,
        format="png",
        interactive=False,
        buttons=["download", "fullscreen"],
        **kwargs,
    )


def serve(demo: Demo, host: str, port: int, allowed: list[Path]) -> None:
    """Serve the page on ``host:port`` until Ctrl-C.

    Raises:
        OSError: the port cannot be bound.
    """
    page = build(demo)
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        ssr_mode=False,
        allowed_paths=[str(p) for p in allowed],
        footer_links=[],
        css=_CSS,
    )
    print(f"moefusion demo: serving on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("moefusion demo: stopped", file=sys.stderr)
    finally:
        page.close()
