"""Model configuration: defaults, dict round trip, unknown keys and validation."""

from __future__ import annotations

import pytest

from moefusion.errors import ConfigError
from moefusion.models import DetectorConfig, MoEFusionConfig, build_model


def test_defaults_follow_release() -> None:
    c = MoEFusionConfig()
    assert (c.num_experts, c.top_k, c.variant, c.combine) == (4, 2, "full", "linear")
    assert c.decoder_channels == (64, 32, 16) and c.gate_grid == (15, 20)
    assert (c.mole_load_weight, c.moge_load_weight) == (0.01, 0.02)
    d = c.detector
    assert (d.backbone, d.fpn_channels, d.trainable_backbone_layers) == ("resnet50", 256, 3)
    assert d.anchor_sizes == (32, 64, 128, 256, 512) and d.aspect_ratios == (0.5, 1.0, 2.0)
    assert (d.rpn_batch_size_per_image, d.box_batch_size_per_image) == (256, 512)
    assert (d.box_positive_fraction, d.box_score_thresh, d.box_nms_thresh) == (0.25, 0.05, 0.5)
    assert d.box_detections_per_img == 100 and d.attention_fuse == "max"


def test_round_trip() -> None:
    c = MoEFusionConfig(
        num_experts=5,
        top_k=3,
        variant="att_local",
        decoder_channels=(32, 16, 8),
        detector=DetectorConfig(backbone="mobilenet_v3_large", fpn_channels=64),
    )
    d = c.to_dict()
    assert d["decoder_channels"] == [32, 16, 8] and isinstance(d["detector"], dict)
    assert MoEFusionConfig.from_dict(d) == c


def test_partial_dict_and_lists() -> None:
    c = MoEFusionConfig.from_dict({"gate_grid": [6, 8], "detector": {"backbone": "resnet18"}})
    assert c.gate_grid == (6, 8) and c.detector.backbone == "resnet18"
    assert c.detector.fpn_channels == 256


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="numexperts"):
        MoEFusionConfig.from_dict({"numexperts": 4})
    with pytest.raises(ConfigError, match="detector.fpn_width"):
        MoEFusionConfig.from_dict({"detector": {"fpn_width": 64}})


@pytest.mark.parametrize(
    "data",
    [
        {"num_experts": 1},
        {"top_k": 0},
        {"num_experts": 4, "top_k": 5},
        {"variant": "no_experts"},
        {"combine": "sum"},
        {"gate_grid": [0, 4]},
        {"decoder_channels": []},
        {"detector": {"backbone": "vgg16"}},
        {"detector": {"attention_fuse": "mean"}},
        {"detector": {"trainable_backbone_layers": 9}},
        {"detector": {"anchor_sizes": [32, 64]}},
        {"detector": 3},
    ],
)
def test_validation(data: dict) -> None:
    with pytest.raises(ConfigError):
        MoEFusionConfig.from_dict(data)


def test_build_model_from_dict() -> None:
    model = build_model(
        {"decoder_channels": [8, 8, 8], "detector": {"backbone": "resnet18", "fpn_channels": 16}},
        with_heads=False,
    )
    assert model.config.detector.fpn_channels == 16
    assert not model.attention.has_heads
