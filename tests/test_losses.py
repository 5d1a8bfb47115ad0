"""Fusion losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from moefusion.losses import box_mask, fusion_loss, gradient_loss, pixel_loss, sobel_magnitude


def _img(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), len(rows[0]))


DELTA = _img([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
# |Sobel_x| + |Sobel_y| of a centred delta with replicate padding, worked out by hand:
# corners |+-1| + |+-1|, edge middles 2 + 0, centre 0.
DELTA_SOBEL = _img([[2, 2, 2], [2, 0, 2], [2, 2, 2]])


def test_sobel_magnitude_delta() -> None:
    assert torch.equal(sobel_magnitude(DELTA), DELTA_SOBEL)


def test_sobel_replicate_padding_no_border_edges() -> None:
    flat = sobel_magnitude(torch.full((2, 1, 4, 5), 0.7))
    assert torch.allclose(flat, torch.zeros(2, 1, 4, 5), atol=1e-6)


def test_sobel_ramp() -> None:
    # horizontal ramp 0,1,2: interior gx = (2-0)*(1+2+1) = 8; replicate border: (1-0)*4 = 4
    ramp = _img([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    assert torch.equal(sobel_magnitude(ramp), _img([[4, 8, 4], [4, 8, 4], [4, 8, 4]]))


def test_gradient_loss_max_target() -> None:
    fused = torch.zeros(1, 1, 3, 3)
    # target = max(S(vi), S(ir)) = S(delta); |0 - target| mean = 16 / 9
    assert gradient_loss(fused, torch.zeros_like(fused), DELTA).item() == pytest.approx(16 / 9)
    assert gradient_loss(fused, DELTA, torch.zeros_like(fused)).item() == pytest.approx(16 / 9)
    assert gradient_loss(DELTA, DELTA, torch.zeros_like(fused)).item() == pytest.approx(0.0)


def test_gradient_loss_target_scale() -> None:
    fused = torch.zeros(1, 1, 3, 3)
    # target = 1.5 * S(delta): mean |0 - 1.5 * S| = 1.5 * 16 / 9
    loss = gradient_loss(fused, torch.zeros_like(fused), DELTA, target_scale=1.5)
    assert loss.item() == pytest.approx(1.5 * 16 / 9)
    # the source itself is no longer a perfect match: |S - 1.5 S| = 0.5 S
    assert gradient_loss(DELTA, DELTA, fused, target_scale=1.5).item() == pytest.approx(8 / 9)
    total = fusion_loss(DELTA, DELTA, fused, None, 0.0, alpha=2.0, grad_target_scale=1.5)
    assert total["grad"].item() == pytest.approx(8 / 9)


def test_grad_target_scale_must_be_positive() -> None:
    from moefusion.errors import ConfigError
    from moefusion.training.config import OptimConfig

    assert OptimConfig(grad_target_scale=1.25).grad_target_scale == 1.25
    with pytest.raises(ConfigError, match="grad_target_scale"):
        OptimConfig(grad_target_scale=0)


def test_gradient_loss_valid_mask_erodes_padding() -> None:
    fused = torch.zeros(1, 1, 3, 3)
    valid = torch.tensor([[True, True, False]] * 3).view(1, 1, 3, 3)
    # column 1 touches the invalid column 2 through the stencil: only column 0 counts
    loss = gradient_loss(fused, torch.zeros_like(fused), DELTA, valid)
    assert loss.item() == pytest.approx(2.0)


def test_box_mask_pixel_centres() -> None:
    mask = box_mask([torch.tensor([[1.0, 0.0, 3.0, 2.0]]), None], height=3, width=4)
    expected = torch.zeros(2, 1, 3, 4)
    expected[0, 0, 0:2, 1:3] = 1
    assert torch.equal(mask, expected)


def test_box_mask_union_of_boxes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 1.0, 3.0, 3.0]])
    mask = box_mask([boxes], height=3, width=3)
    assert mask[0, 0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


VI = _img([[1.0, 0.0], [0.5, 0.2]])
IR = _img([[0.0, 1.0], [0.1, 0.4]])
# max = [[1, 1], [0.5, 0.4]], mean = [[0.5, 0.5], [0.3, 0.3]]


def test_pixel_loss_labelled() -> None:
    fused = torch.zeros(1, 1, 2, 2)
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0]])]  # pixel (0, 0) only
    # inside |0 - 1| = 1; outside 0.5 + 0.3 + 0.3 = 1.1; (1 + 1.1) / 4
    assert pixel_loss(fused, IR, VI, boxes).item() == pytest.approx(2.1 / 4)


def test_pixel_loss_unlabelled_uses_max_target() -> None:
    fused = torch.zeros(1, 1, 2, 2)
    expected = (1 + 1 + 0.5 + 0.4) / 4
    assert pixel_loss(fused, IR, VI, [None]).item() == pytest.approx(expected)
    assert pixel_loss(fused, IR, VI, None).item() == pytest.approx(expected)
    # labelled without boxes (negative image): mean target everywhere
    empty = [torch.zeros(0, 4)]
    assert pixel_loss(fused, IR, VI, empty).item() == pytest.approx((0.5 + 0.5 + 0.3 + 0.3) / 4)


def test_pixel_loss_valid_and_mixed_batch() -> None:
    fused = torch.zeros(2, 1, 2, 2)
    ir, vi = IR.repeat(2, 1, 1, 1), VI.repeat(2, 1, 1, 1)
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None]
    valid = torch.ones(2, 1, 2, 2, dtype=torch.bool)
    valid[:, :, 1, 1] = False
    # sample 0: 1 + 0.5 + 0.3 ; sample 1: 1 + 1 + 0.5 ; 6 valid pixels
    loss = pixel_loss(fused, ir, vi, boxes, valid)
    assert loss.item() == pytest.approx((1.8 + 2.5) / 6)


def test_fusion_loss_eq5() -> None:
    fused = torch.zeros(1, 1, 3, 3)
    vi, ir = DELTA, torch.zeros(1, 1, 3, 3)
    out = fusion_loss(fused, ir, vi, None, torch.tensor(0.25), alpha=10.0)
    assert out["pixel"].item() == pytest.approx(1 / 9)
    assert out["grad"].item() == pytest.approx(16 / 9)
    assert out["load"].item() == pytest.approx(0.25)
    assert out["total"].item() == pytest.approx(1 / 9 + 10 * 16 / 9 + 0.25)


def test_fusion_loss_differentiable() -> None:
    fused = torch.rand(2, 1, 8, 8, requires_grad=True)
    out = fusion_loss(fused, torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), None, 0.0)
    out["total"].backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all()


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        pixel_loss(torch.zeros(1, 2, 2, 2), IR, VI)
    with pytest.raises(ValueError):
        pixel_loss(torch.zeros(1, 1, 2, 2), IR, VI, [None, None])
