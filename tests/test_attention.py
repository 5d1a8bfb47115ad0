"""Auxiliary detectors: attention map, detection losses, inference path, weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from moefusion.errors import ConfigError
from moefusion.models import (
    AttentionDetectors,
    DetectorConfig,
    MoEFusionConfig,
    build_backbone,
    build_model,
    fpn_finest_level,
)


def det_config(**kwargs) -> DetectorConfig:
    kwargs.setdefault("backbone", "resnet18")
    return DetectorConfig(fpn_channels=32, representation_size=64, num_classes=3, **kwargs)


@pytest.fixture(scope="module")
def detectors() -> AttentionDetectors:
    torch.manual_seed(0)
    return AttentionDetectors(det_config())


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Batch sizes of the ImageLists a detection head is called with."""
    calls: list[int] = []
    handle = module.register_forward_pre_hook(
        lambda m, args: calls.append(args[0].tensors.shape[0])
    )
    try:
        yield calls
    finally:
        handle.remove()


def test_losses_for_labelled_batch(detectors: AttentionDetectors) -> None:
    detectors.train()
    ir, vi = torch.rand(2, 1, 70, 90), torch.rand(2, 1, 70, 90)
    targets = [target([[5, 5, 40, 50]], [0]), target([[10, 20, 80, 60], [2, 2, 20, 20]], [2, 1])]
    att, losses = detectors(ir, vi, targets)
    assert att.shape == (2, 1, 70, 90)
    names = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert set(losses) == {f"{m}_{n}" for m in ("vis", "ir") for n in names}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
        assert value.item() > 0, name
    sum(losses.values()).backward()
    assert detectors.backbones["vis"].fpn.layer_blocks[0][0].weight.grad is not None
    assert detectors.spatial["ir"]["0"][0].weight.grad is not None
    detectors.zero_grad(set_to_none=True)


def test_mixed_batch_uses_labelled_samples_only(detectors: AttentionDetectors) -> None:
    detectors.train()
    ir, vi = torch.rand(3, 1, 64, 64), torch.rand(3, 1, 64, 64)
    with count_calls(detectors.rpn["vis"]) as rpn_calls:
        att, losses = detectors(ir, vi, [None, target([[8, 8, 40, 40]], [1]), None])
    assert att.shape == (3, 1, 64, 64)
    assert rpn_calls == [1]  # only the labelled sample reaches the RPN
    assert len(losses) == 8 and all(torch.isfinite(v) for v in losses.values())


def test_unlabelled_batches_skip_heads(detectors: AttentionDetectors) -> None:
    ir, vi = torch.rand(2, 1, 50, 60), torch.rand(2, 1, 50, 60)
    with count_calls(detectors.rpn["ir"]) as rpn_calls, count_calls(detectors.rpn["vis"]) as vis:
        for mode in (True, False):
            detectors.train(mode)
            for targets in (None, [None, None]):
                att, losses = detectors(ir, vi, targets)
                assert losses == {}
                assert att.shape == (2, 1, 50, 60)
    assert rpn_calls == [] and vis == []


def test_losses_in_eval_mode(detectors: AttentionDetectors) -> None:
    detectors.eval()
    _, losses = detectors(
        torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64), [target([[4, 4, 30, 30]], [0])]
    )
    assert len(losses) == 8
    assert not detectors.rpn["vis"].training  # mode restored


def test_attention_range_and_detach(detectors: AttentionDetectors) -> None:
    detectors.train()
    att, _ = detectors(torch.rand(2, 1, 45, 77), torch.rand(2, 1, 45, 77))
    assert att.shape == (2, 1, 45, 77)
    assert att.min().item() >= 0.0 and att.max().item() <= 1.0
    assert not att.requires_grad  # detached (release)


def test_attention_is_max_of_modalities(detectors: AttentionDetectors) -> None:
    detectors.eval()
    low: dict[str, torch.Tensor] = {}
    handles = [
        detectors.spatial[m]["0"].register_forward_hook(
            lambda mod, args, out, m=m: low.__setitem__(m, out)
        )
        for m in ("vis", "ir")
    ]
    with torch.no_grad():
        att, _ = detectors(torch.rand(1, 1, 60, 90), torch.rand(1, 1, 60, 90))
    for handle in handles:
        handle.remove()
    assert low["vis"].shape == (1, 1, 16, 24)  # stride 4 of the padded 64 x 96
    expected = F.interpolate(
        torch.maximum(low["vis"], low["ir"]), scale_factor=4.0, mode="bilinear"
    )
    assert torch.allclose(att, expected[..., :60, :90])


def test_finest_level_matches_full_fpn(detectors: AttentionDetectors) -> None:
    detectors.eval()
    x = torch.randn(1, 3, 96, 128)
    backbone = detectors.backbones["vis"]
    with torch.no_grad():
        assert torch.allclose(fpn_finest_level(backbone, x), backbone(x)["0"], atol=1e-5)


def test_detect(detectors: AttentionDetectors) -> None:
    detectors.train()
    dets = detectors.detect(torch.rand(2, 1, 64, 80), torch.rand(2, 1, 64, 80))
    assert detectors.training  # mode restored
    assert len(dets) == 2
    for sample in dets:
        assert set(sample) == {"vis", "ir"}
        for d in sample.values():
            assert d["boxes"].shape[1] == 4 and d["boxes"].shape[0] <= 100
            if d["labels"].numel():
                assert d["labels"].min() >= 0 and d["labels"].max() < 3
                assert d["boxes"][:, 2].max() <= 80 and d["boxes"][:, 3].max() <= 64


def test_bad_targets(detectors: AttentionDetectors) -> None:
    ir, vi = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with pytest.raises(ValueError):
        detectors(ir, vi, [target([[1, 1, 5, 5]], [3])])  # label out of range
    with pytest.raises(ValueError):
        detectors(ir, vi, [None, None])  # wrong length
    with pytest.raises(ValueError):
        detectors(ir, torch.rand(1, 1, 32, 31))


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet18"])
def test_backbone_levels(backbone: str) -> None:
    net = build_backbone(det_config(backbone=backbone)).eval()
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 128, 192))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [
        (32, 48),
        (16, 24),
        (8, 12),
        (4, 6),
        (2, 3),
    ]
    assert all(f.shape[1] == 32 for f in feats.values())


def test_mobilenet_and_conv_fuse_end_to_end() -> None:
    torch.manual_seed(0)
    det = AttentionDetectors(
        det_config(backbone="mobilenet_v3_large", attention_fuse="conv")
    ).train()
    ir, vi = torch.rand(2, 1, 66, 70), torch.rand(2, 1, 66, 70)
    att, losses = det(ir, vi, [target([[3, 3, 33, 40]], [2]), None])
    assert att.shape == (2, 1, 66, 70) and att.min() >= 0 and att.max() <= 1
    assert len(losses) == 8
    # the fuse convs train from the fusion side even though the maps are detached
    att.mean().backward()
    assert det.fuse.convs[0].weight.grad is not None
    assert det.spatial["vis"]["0"][0].weight.grad is None


def test_trainable_layers_freeze_stem() -> None:
    net = build_backbone(det_config(trainable_backbone_layers=3))
    params = dict(net.body.named_parameters())
    assert (
        not params["conv1.weight"].requires_grad
        and not params["layer1.0.conv1.weight"].requires_grad
    )
    assert params["layer2.0.conv1.weight"].requires_grad


def test_inference_state_without_heads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = MoEFusionConfig(
        decoder_channels=(8, 8, 8),
        detector=det_config(),
    )
    full = build_model(cfg)
    state = full.inference_state_dict()
    assert not any(".rpn." in k or ".roi_heads." in k for k in state)
    assert not any(
        k.startswith(("rpn.", "roi_heads.")) for k in full.attention.attention_state_dict()
    )
    light = build_model(cfg, with_heads=False)
    light.load_inference_state_dict(state)
    full.eval(), light.eval()
    ir, vi = torch.rand(1, 1, 40, 50), torch.rand(1, 1, 40, 50)
    with torch.no_grad():
        assert torch.allclose(full(ir, vi).fused, light(ir, vi).fused)
    with pytest.raises(ConfigError):
        light.load_inference_state_dict({"bogus": torch.zeros(1)})
    with pytest.raises(RuntimeError):
        light.attention(ir, vi, [target([[1, 1, 9, 9]], [0])])


def test_backbone_weights(tmp_path: Path) -> None:
    good = tmp_path / "r18.pth"
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), good)
    net = build_backbone(det_config(backbone_weights=str(good), trainable_backbone_layers=5))
    assert torch.equal(net.body.conv1.weight, reference.conv1.weight)
    assert type(net.body.bn1).__name__ == "FrozenBatchNorm2d"  # "auto" with weights
    wrong = tmp_path / "mbv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), wrong)
    with pytest.raises(ConfigError, match="do not match"):
        build_backbone(det_config(backbone_weights=str(wrong)))
    with pytest.raises(ConfigError, match="not found"):
        build_backbone(det_config(backbone_weights=str(tmp_path / "missing.pth")))


def test_backbone_weights_wrappers_and_prefix(tmp_path: Path) -> None:
    from moefusion.models.detector_parts import load_backbone_weights

    reference = torchvision.models.mobilenet_v3_small(weights=None)
    wrapped = tmp_path / "wrapped.pt"
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state}, wrapped)
    net = build_backbone(
        det_config(backbone="mobilenet_v3_small", backbone_weights=str(wrapped), backbone_norm="bn")
    )
    assert torch.equal(net.body["0"][0].weight, reference.features[0][0].weight)
    # the classification head is dropped by the FPN extractor: it may be absent
    target = torchvision.models.resnet18(weights=None)
    headless = tmp_path / "headless.pth"
    source = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({k: v for k, v in source.items() if not k.startswith("fc.")}, headless)
    load_backbone_weights(target, headless, "resnet18")
    assert torch.equal(target.conv1.weight, source["conv1.weight"])
