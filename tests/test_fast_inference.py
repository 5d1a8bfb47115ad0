"""Fast inference (issue #17): lean backbones, the optimised forward, its tolerance on the
samples, half precision, and what ``moefusion fuse`` imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion.errors import MoEFusionError
from moefusion.fuser import Fuser
from moefusion.models import DetectorConfig, MoEFusion, MoEFusionConfig, build_model
from moefusion.models.backbones import build_lean_backbone
from moefusion.models.inference import FastMoEFusion, check_precision, dense_encode, fold_batchnorm

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

#: Modules ``moefusion fuse`` must not import (training, plotting, detection evaluation,
#: metrics, export, UI): each costs start-up time and none is needed to fuse.
FORBIDDEN = (
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "tensorboard",
    "torch.utils.tensorboard",
    "matplotlib",
    "pycocotools",
    "gradio",
    "torchvision",
    "torchmetrics",
    "scipy",
    "onnx",
    "onnxruntime",
    "pandas",
    "sklearn",
    "skimage",
    "pywt",
    "moefusion.training",
    "moefusion.evaluation",
    "moefusion.metrics",
    "moefusion.detection",
    "moefusion.models.detector_parts",
    "moefusion.commands.train",
    "moefusion.commands.evaluate",
)


def _u8(x: np.ndarray) -> np.ndarray:
    """The 8-bit value ``moefusion fuse`` writes (``floor(x * 255 + 0.5)``)."""
    return np.clip(np.floor(np.asarray(x, np.float64) * 255.0 + 0.5), 0, 255).astype(np.int16)


def _sample_pairs() -> list[tuple[np.ndarray, np.ndarray, str]]:
    from moefusion.data import find_pairs, load_pair

    pairs = find_pairs(SAMPLES / "ir", SAMPLES / "vi")
    return [(lp.ir, lp.vi, p.stem) for p in pairs for lp in [load_pair(p.ir, p.vi)]]


# ------------------------------------------------------------------ lean backbones
@pytest.mark.parametrize(
    ("backbone", "norm"),
    [
        ("mobilenet_v3_large", "bn"),
        ("mobilenet_v3_small", "bn"),
        ("mobilenet_v3_small", "frozen_bn"),
        ("resnet18", "bn"),
        ("resnet18", "frozen_bn"),
        ("resnet50", "bn"),
    ],
)
def test_lean_backbone_matches_torchvision(backbone: str, norm: str) -> None:
    from moefusion.models.detector_parts import build_backbone, fpn_finest_level

    cfg = DetectorConfig(backbone=backbone, fpn_channels=16, backbone_norm=norm)
    torch.manual_seed(0)
    reference = build_backbone(cfg)
    for m in reference.modules():  # non-trivial statistics, so that BN matters
        if hasattr(m, "running_mean") and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    reference.eval()
    state = reference.state_dict()
    with torch.device("meta"):
        lean = build_lean_backbone(cfg)
    assert list(lean.state_dict()) == list(state)
    lean.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
    lean.eval()
    x = torch.rand(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = reference(x), lean(x)
        assert list(want) == list(got) == ["0", "1", "2", "3", "pool"]
        for k in want:
            assert torch.equal(want[k], got[k]), k
        assert torch.equal(lean.finest_level(x), fpn_finest_level(reference, x))


def test_load_weights_builds_lean_model_with_identical_outputs(tiny_weights: Path) -> None:
    from safetensors.torch import load_file

    from moefusion.weights import CONFIG_KEY, load_weights, read_metadata

    lean = load_weights(tiny_weights)
    assert type(lean.attention.backbones["vis"]).__name__ == "LeanBackboneWithFPN"
    assert not any(t.is_meta for t in [*lean.parameters(), *lean.buffers()])
    config = MoEFusionConfig.from_dict(json.loads(read_metadata(tiny_weights)[CONFIG_KEY]))
    reference = MoEFusion(config, with_heads=False)
    reference.load_inference_state_dict(load_file(str(tiny_weights)))
    reference.eval()
    assert list(lean.state_dict()) == list(reference.state_dict())
    ir, vi = torch.rand(1, 1, 50, 70), torch.rand(1, 1, 50, 70)
    with torch.inference_mode():
        a, b = reference(ir, vi), lean(ir, vi)
    assert torch.equal(a.fused, b.fused) and torch.equal(a.attention, b.attention)
    with pytest.raises(ValueError, match="inference"):
        MoEFusion(config, with_heads=True, lean_backbones=True)


def test_subnormal_weights_are_zeroed_on_load_and_save(tiny_weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from moefusion.weights import CONFIG_KEY, load_weights, read_metadata, save_weights

    state = load_file(str(tiny_weights))
    keys = [k for k in state if "experts.0" in k and k.endswith("weight")][:2] + [
        next(k for k in state if k.endswith("w_gate"))
    ]
    g = torch.Generator().manual_seed(0)
    for k in keys:  # a third of the entries become subnormal, of both signs
        planted = torch.rand(state[k].shape, generator=g) < 1 / 3
        tiny = (torch.rand(state[k].shape, generator=g) - 0.5) * 2e-39
        state[k] = torch.where(planted, tiny, state[k])
    raw = tmp_path / "raw.safetensors"
    save_file(state, str(raw), metadata=read_metadata(tiny_weights))
    model = load_weights(raw)
    loaded = model.inference_state_dict()
    smallest = torch.finfo(torch.float32).tiny
    for k, v in state.items():
        kept = v.abs() >= smallest
        assert torch.equal(loaded[k][kept], v[kept]), k  # normal values untouched
        assert not bool(loaded[k][~kept].any()), k  # subnormals (and zeros) are 0
    assert sum(int(((v.abs() < smallest) & (v != 0)).sum()) for v in state.values()) > 100
    # the fused image is that of the unflushed weights, bit for bit
    config = MoEFusionConfig.from_dict(json.loads(read_metadata(tiny_weights)[CONFIG_KEY]))
    reference = MoEFusion(config, with_heads=False)
    reference.load_inference_state_dict(state)
    reference.eval()
    ir, vi = torch.rand(1, 1, 50, 70, generator=g), torch.rand(1, 1, 50, 70, generator=g)
    with torch.inference_mode():
        assert torch.equal(reference(ir, vi).fused, model(ir, vi).fused)
    # a model with subnormal parameters is saved without them
    saved = load_file(str(save_weights(reference, tmp_path / "saved.safetensors")))
    assert all(not bool(((v.abs() < smallest) & (v != 0)).any()) for v in saved.values())


# ------------------------------------------------------------------ fast forward
def test_fold_batchnorm_keeps_outputs() -> None:
    from moefusion.models.detector_parts import build_backbone

    torch.manual_seed(1)
    for norm in ("bn", "frozen_bn"):
        net = build_backbone(
            DetectorConfig(backbone="resnet18", fpn_channels=16, backbone_norm=norm)
        )
        for m in net.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        net.eval()
        x = torch.rand(1, 3, 64, 64)
        with torch.inference_mode():
            want = net(x)
            folded = fold_batchnorm(net)
            got = folded(x)
        names = {type(m).__name__ for m in folded.modules()}
        assert not names & {"BatchNorm2d", "FrozenBatchNorm2d"}, norm
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_dense_encode_equals_encoder(make_tiny_model) -> None:
    encoder = make_tiny_model().fusion.encoder_vis.eval()
    x = torch.rand(2, 1, 33, 47)
    with torch.inference_mode():
        last, dense = encoder(x)
        feats = dense_encode(encoder, x)
    torch.testing.assert_close(feats[-1], last, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat(feats, 1), dense, rtol=0, atol=1e-6)
    assert feats[-1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"variant": "no_mole"},
        {"variant": "att_local"},
        {"variant": "no_moge"},
        {"combine": "log"},
    ],
)
def test_fast_forward_matches_model(make_tiny_model, tiny_config, change) -> None:
    if change:
        torch.manual_seed(0)
        model = build_model({**tiny_config, **change}, with_heads=False)
    else:
        model = make_tiny_model()
    for m in model.modules():  # BatchNorm statistics that folding has to get right
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    fast = FastMoEFusion(model).eval()
    ir, vi = torch.rand(3, 1, 45, 61), torch.rand(3, 1, 45, 61)
    with torch.inference_mode():
        want, got = model(ir, vi), fast(ir, vi)
    torch.testing.assert_close(got.attention, want.attention, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.fused, want.fused, rtol=0, atol=2e-5)
    assert set(got.gates) == set(want.gates)
    for k in want.gates:
        assert torch.equal(got.gates[k] > 0, want.gates[k] > 0), k
        torch.testing.assert_close(got.gates[k], want.gates[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(got.load_loss, want.load_loss, rtol=1e-5, atol=1e-7)
    with pytest.raises(MoEFusionError):
        fast.train()


def test_precision_checks() -> None:
    cpu = torch.device("cpu")
    assert check_precision("bf16", cpu) == "bf16"
    with pytest.raises(MoEFusionError, match="CUDA"):
        check_precision("fp16", cpu)
    with pytest.raises(MoEFusionError, match="precision"):
        check_precision("int8", cpu)
    with pytest.raises(MoEFusionError, match="bf16"):
        check_precision("bf16", torch.device("mps"))


# --------------------------------------------------- tolerance on the bundled samples
@pytest.fixture(scope="module")
def sample_outputs() -> dict[str, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]]:
    """Per path (plain fp32 eager model, optimised fp32, optimised bf16): the 8-bit fused
    image and the gates of every sample pair, with the bundled weights."""
    from moefusion.weights import bundled_weights_path

    if bundled_weights_path() is None:
        pytest.skip("this build has no bundled weights")
    pairs = _sample_pairs()
    paths = {
        "plain": Fuser.pretrained(device="cpu", optimize=False),
        "fast": Fuser.pretrained(device="cpu"),
        "bf16": Fuser.pretrained(device="cpu", precision="bf16"),
    }
    out: dict[str, dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]] = {}
    for name, fuser in paths.items():
        results = fuser.fuse_arrays([p[0] for p in pairs], [p[1] for p in pairs], details=True)
        out[name] = {p[2]: (_u8(r.fused), r.gates) for p, r in zip(pairs, results, strict=True)}
    return out


@pytest.mark.parametrize("path", ["fast", "bf16"])
def test_samples_within_one_grey_level_of_plain_fp32(sample_outputs, path: str) -> None:
    plain = sample_outputs["plain"]
    assert len(plain) == 5
    for stem, (image, gates) in sample_outputs[path].items():
        ref_image, ref_gates = plain[stem]
        diff = np.abs(image - ref_image)
        assert diff.max() <= 1, (path, stem, int(diff.max()))
        for k in ref_gates:  # the same experts fire
            assert np.array_equal(gates[k] > 0, ref_gates[k] > 0), (path, stem, k)
        if path == "fast":  # float rounding only: a handful of pixels at a .5 boundary
            assert np.count_nonzero(diff) <= 1e-4 * diff.size, (stem, np.count_nonzero(diff))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_paths_within_one_grey_level(sample_outputs, precision: str) -> None:
    fuser = Fuser.pretrained(device="cuda", precision=precision)
    pairs = _sample_pairs()
    results = fuser.fuse_arrays([p[0] for p in pairs], [p[1] for p in pairs])
    for (_, _, stem), res in zip(pairs, results, strict=True):
        diff = np.abs(_u8(res.fused) - sample_outputs["plain"][stem][0])
        assert diff.max() <= 1, (precision, stem, int(diff.max()))


def test_fuser_paths(tiny_weights: Path) -> None:
    plain = Fuser.from_file(tiny_weights, device="cpu", optimize=False)
    assert plain._runner is plain.model
    fast = Fuser.from_file(tiny_weights, device="cpu")
    assert isinstance(fast._runner, FastMoEFusion)
    with pytest.raises(MoEFusionError, match="CUDA"):
        Fuser.from_file(tiny_weights, device="cpu", precision="fp16")
    with pytest.raises(MoEFusionError, match="optimize"):
        Fuser.from_file(tiny_weights, device="cpu", precision="bf16", optimize=False)


# --------------------------------------------------------------- start-up imports
def test_fuse_command_imports_only_what_it_needs(tiny_weights: Path, tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from moefusion.cli import main\n"
        f"rc = main(['fuse', '--ir', {str(SAMPLES / 'ir' / 'FLIR_05016.jpg')!r}, "
        f"'--vi', {str(SAMPLES / 'vi' / 'FLIR_05016.jpg')!r}, '--out', {str(tmp_path / 'out')!r}, "
        f"'--weights', {str(tiny_weights)!r}, '--no-progress', '--color'])\n"
        "print(json.dumps([rc, sorted(sys.modules)]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, modules = json.loads(run.stdout.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "out" / "FLIR_05016.png").is_file()
    loaded = [m for m in FORBIDDEN if m in modules]
    assert not loaded, f"moefusion fuse imported {loaded}"
    assert "torch" in modules


def test_reuse_freed_memory_in_a_subprocess() -> None:
    code = (
        "from moefusion.runtime import reuse_freed_memory\n"
        "a = reuse_freed_memory(); b = reuse_freed_memory()\n"
        "print(a, b)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = out.stdout.split()
    assert first == second
    if sys.platform.startswith("linux"):
        assert first == "True"
    off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MOEFUSION_REUSE_MEMORY": "0"},
    )
    assert off.stdout.split() == ["False", "False"]


def test_flush_denormals_flushes_inside_and_restores() -> None:
    from moefusion.runtime import denormals_flushed, flush_denormals

    x = torch.tensor([1e-30])
    assert float(x * 1e-9) > 0 and not denormals_flushed()  # PyTorch's default
    with flush_denormals():
        assert float(x * 1e-9) == 0.0 and denormals_flushed()
        assert float(x * 1e-7) == pytest.approx(1e-37)  # normal results are unchanged
        with flush_denormals():  # nested: the outer mode is restored
            pass
        assert denormals_flushed()
    assert float(x * 1e-9) > 0 and not denormals_flushed()


_POOL_SCRIPT = """
import torch
from moefusion.runtime import denormals_flushed_in_pool, flush_denormals
torch.set_num_threads(2)
(torch.randn(2**20) * 2).sum()  # the OpenMP pool exists before the mode is set
torch.set_flush_denormal(True)
calling_thread_only = denormals_flushed_in_pool()
torch.set_flush_denormal(False)
with flush_denormals():
    inside = denormals_flushed_in_pool()
print(calling_thread_only, inside, denormals_flushed_in_pool())
"""


def test_flush_denormals_reaches_an_existing_thread_pool() -> None:
    # The mode is a per-thread register: torch.set_flush_denormal misses pool threads that
    # already exist (a 2-thread training run slowed 8x); flush_denormals sets them all.
    out = subprocess.run(
        [sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True", "False"]
