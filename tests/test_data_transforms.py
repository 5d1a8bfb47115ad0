"""Paired geometric augmentations and their effect on boxes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moefusion.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    RandomVerticalFlip,
    Resize,
)
from moefusion.errors import MoEFusionError

H, W = 20, 30


def _sample(boxes: list[list[float]] | None = None, h: int = H, w: int = W) -> dict[str, Any]:
    """Pixel value encodes its position, so a transformed image reveals the geometry."""
    pos = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) / (h * w)
    b = None if boxes is None else torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "ir": pos.clone(),
        "vi": pos.clone() * 0.5,
        "vi_rgb": pos.repeat(3, 1, 1) * 0.25,
        "boxes": b,
        "labels": None if b is None else torch.arange(len(b), dtype=torch.int64),
        "stem": "s",
        "dataset": "t",
    }


def _assert_same_geometry(out: dict[str, Any]) -> None:
    torch.testing.assert_close(out["vi"], out["ir"] * 0.5)
    torch.testing.assert_close(out["vi_rgb"], out["ir"].repeat(3, 1, 1) * 0.25)


def test_horizontal_flip_moves_box() -> None:
    s = _sample([[2, 3, 10, 8]])
    out = RandomHorizontalFlip(p=1.0)(s)
    torch.testing.assert_close(out["ir"], s["ir"].flip(-1))
    _assert_same_geometry(out)
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[W - 10, 3, W - 2, 8]], dtype=torch.float32)
    )
    assert RandomHorizontalFlip(p=0.0)(s) is s


def test_vertical_flip_moves_box() -> None:
    out = RandomVerticalFlip(p=1.0)(_sample([[2, 3, 10, 8]]))
    torch.testing.assert_close(
        out["boxes"], torch.tensor([[2, H - 8, 10, H - 3]], dtype=torch.float32)
    )
    _assert_same_geometry(out)
    assert RandomVerticalFlip().p == 0.0


def test_flip_is_seeded_by_torch() -> None:
    flip = RandomHorizontalFlip(p=0.5)
    torch.manual_seed(3)
    first = [bool((flip(_sample())["ir"] != _sample()["ir"]).any()) for _ in range(20)]
    torch.manual_seed(3)
    second = [bool((flip(_sample())["ir"] != _sample()["ir"]).any()) for _ in range(20)]
    assert first == second and any(first) and not all(first)


def _expected_crop(box: list[float], top: int, left: int, ch: int, cw: int) -> list[float] | None:
    x1, y1 = min(max(box[0] - left, 0), cw), min(max(box[1] - top, 0), ch)
    x2, y2 = min(max(box[2] - left, 0), cw), min(max(box[3] - top, 0), ch)
    w, h = x2 - x1, y2 - y1
    area = (box[2] - box[0]) * (box[3] - box[1])
    return [x1, y1, x2, y2] if w >= 2 and h >= 2 and w * h >= 0.3 * area else None


def test_random_crop_shifts_and_clips_boxes() -> None:
    boxes = [[0, 0, 14, 12], [5, 5, 9, 9], [1, 1, 3, 3], [20, 12, 30, 20]]
    crop = RandomCrop((10, 12))
    seen_kept, seen_dropped = set(), set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = crop(_sample(boxes))
        assert out["ir"].shape == (1, 10, 12) and out["vi_rgb"].shape == (3, 10, 12)
        _assert_same_geometry(out)
        # The top-left pixel's value says where the window was taken.
        top, left = divmod(int(round(out["ir"][0, 0, 0].item() * H * W)), W)
        expected = [(i, _expected_crop(b, top, left, 10, 12)) for i, b in enumerate(boxes)]
        kept = [(i, b) for i, b in expected if b is not None]
        assert out["labels"].tolist() == [i for i, _ in kept]
        torch.testing.assert_close(
            out["boxes"], torch.tensor([b for _, b in kept], dtype=torch.float32).reshape(-1, 4)
        )
        seen_kept |= {i for i, _ in kept}
        seen_dropped |= {i for i, b in expected if b is None}
    assert seen_kept & seen_dropped  # some box was kept by one crop and dropped by another


def test_random_crop_pads_small_images() -> None:
    out = RandomCrop(25)(_sample([[1, 1, 5, 5]], h=10, w=8))
    assert out["ir"].shape == (1, 25, 25)
    assert out["valid"].dtype == torch.bool and int(out["valid"].sum()) == 80
    assert float(out["ir"][~out["valid"]].abs().sum()) == 0.0
    torch.testing.assert_close(out["boxes"], torch.tensor([[1.0, 1, 5, 5]]))
    with pytest.raises(MoEFusionError, match="smaller than"):
        RandomCrop(25, pad_if_needed=False)(_sample(h=10, w=8))


def test_resize_scales_boxes_and_keeps_range() -> None:
    s = _sample([[3, 2, 15, 10]])
    out = Resize((40, 15))(s)
    assert out["ir"].shape == (1, 40, 15) and out["vi_rgb"].shape == (3, 40, 15)
    torch.testing.assert_close(out["boxes"], torch.tensor([[1.5, 4, 7.5, 20]]))
    assert float(out["ir"].min()) >= 0.0 and float(out["ir"].max()) <= 1.0
    small = Resize(max_side=15)(s)
    assert small["ir"].shape == (1, 10, 15)
    torch.testing.assert_close(small["boxes"], torch.tensor([[1.5, 1, 7.5, 5]]))
    assert Resize(max_side=100)(s) is s  # never enlarges
    with pytest.raises(MoEFusionError):
        Resize()


def test_random_resize_range_and_reproducible() -> None:
    rr = RandomResize((0.5, 1.5))
    torch.manual_seed(1)
    shapes = [tuple(rr(_sample([[0, 0, 30, 20]]))["ir"].shape) for _ in range(8)]
    torch.manual_seed(1)
    again = [tuple(rr(_sample())["ir"].shape) for _ in range(8)]
    assert shapes == again
    assert all(10 <= h <= 30 and 15 <= w <= 45 for _, h, w in shapes)
    out = RandomResize((2.0, 2.0))(_sample([[0, 0, 30, 20]]))
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 0, 60, 40]]))


def test_compose_and_unlabelled_sample() -> None:
    t = Compose([Resize((10, 15)), RandomHorizontalFlip(1.0), RandomCrop((5, 5))])
    out = t(_sample())
    assert out["ir"].shape == (1, 5, 5) and out["boxes"] is None and out["labels"] is None
    _assert_same_geometry(out)
