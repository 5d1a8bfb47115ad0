"""Fusion losses (paper section 3.4, eq. 5): pixel, gradient and the total fusion loss.

All functions are functional and batch-aware. Images are ``[B, 1, H, W]`` tensors; the
optional ``valid`` mask (``[B, 1, H, W]`` bool, True on real pixels) removes the
zero-padding of batched images of different sizes from every loss. Means are taken over
all valid pixels of the batch (every pixel weighs the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _check_image(name: str, x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be [B, 1, H, W], got {tuple(x.shape)}")


def _valid_float(valid: Tensor | None, like: Tensor) -> Tensor | None:
    if valid is None:
        return None
    if valid.shape != like.shape:
        raise ValueError(f"valid must be {tuple(like.shape)}, got {tuple(valid.shape)}")
    return valid.to(like.dtype)


def _masked_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Sum of ``values * weight`` over the number of valid pixels (plain mean without mask)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def sobel_magnitude(x: Tensor) -> Tensor:
    """``|Sobel_x * x| + |Sobel_y * x|`` with replicate padding (kernel weights 1-2-1).

    Replicate padding: zero padding would put a strong artificial edge along the image
    border of the fused and both source images, which the gradient loss would then ask
    the fused image to reproduce.

    Shapes:
        ``[B, 1, H, W] -> [B, 1, H, W]``.
    """
    _check_image("x", x)
    kx = _SOBEL_X.to(device=x.device, dtype=x.dtype)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # [2, 1, 3, 3]
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels)
    return grads.abs().sum(dim=1, keepdim=True)


def gradient_loss(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    valid: Tensor | None = None,
    target_scale: float = 1.0,
) -> Tensor:
    """Mean ``|S(F) - s * max(S(vi), S(ir))|`` with ``S`` = :func:`sobel_magnitude`.

    ``s`` = ``target_scale`` (the paper: 1); above 1 the target is sharper than either
    source (a deviation tried for SF and AG, docs/training.md).

    With ``valid``, pixels whose 3x3 Sobel stencil reaches an invalid (padding) pixel
    are also excluded, so padding never creates gradients to match.

    Shapes:
        ``fused, ir, vi [B, 1, H, W]``, ``valid [B, 1, H, W] bool | None`` -> scalar.
    """
    target = torch.maximum(sobel_magnitude(vi), sobel_magnitude(ir))
    if target_scale != 1.0:
        target = target * target_scale
    diff = (sobel_magnitude(fused) - target).abs()
    weight = _valid_float(valid, fused)
    if weight is not None:
        # erosion by the Sobel support; max_pool pads with -inf so the tensor border is kept
        weight = -F.max_pool2d(-weight, kernel_size=3, stride=1, padding=1)
    return _masked_mean(diff, weight)


def box_mask(
    boxes_list: Sequence[Tensor | None],
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """1 inside any ground-truth box, 0 elsewhere (``None`` -> all zeros).

    A pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``; it is inside box
    ``(x1, y1, x2, y2)`` when its centre is: ``x1 <= j + 0.5 <= x2`` and
    ``y1 <= i + 0.5 <= y2``. For integer boxes that is ``mask[y1:y2, x1:x2]``.

    Shapes:
        B entries of ``[K, 4]`` xyxy pixel boxes -> ``[B, 1, H, W]``.
    """
    if device is None:
        device = next((b.device for b in boxes_list if b is not None), torch.device("cpu"))
    cols = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    rows = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    masks = []
    for boxes in boxes_list:
        if boxes is None or boxes.numel() == 0:
            masks.append(torch.zeros(height, width, dtype=torch.bool, device=device))
            continue
        b = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        in_x = (cols >= b[:, 0:1]) & (cols <= b[:, 2:3])  # [K, W]
        in_y = (rows >= b[:, 1:2]) & (rows <= b[:, 3:4])  # [K, H]
        masks.append((in_y[:, :, None] & in_x[:, None, :]).any(dim=0))
    return torch.stack(masks).unsqueeze(1).to(dtype)


def pixel_loss(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    boxes: Sequence[Tensor | None] | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Detection-driven intensity loss (the release's pixel loss).

    Labelled sample (boxes given, possibly empty): inside the boxes ``|F - max(vi, ir)|``,
    outside ``|F - (vi + ir) / 2|``; the two terms are added, each being its sum over its
    region divided by the number of valid pixels, so the total is the mean of
    ``|F - target|`` with a region-dependent target. Unlabelled sample (``None``, or
    ``boxes=None`` for the whole batch): the max target everywhere.

    Shapes:
        ``fused, ir, vi [B, 1, H, W]``, ``boxes`` B entries ``[K, 4] | None``,
        ``valid [B, 1, H, W] bool | None`` -> scalar.
    """
    for name, x in (("fused", fused), ("ir", ir), ("vi", vi)):
        _check_image(name, x)
    batch, _, height, width = fused.shape
    max_target = torch.maximum(vi, ir)
    if boxes is None:
        boxes = [None] * batch
    if len(boxes) != batch:
        raise ValueError(f"boxes has {len(boxes)} entries for a batch of {batch}")
    inside = box_mask(boxes, height, width, device=fused.device, dtype=fused.dtype)
    labelled = torch.tensor([b is not None for b in boxes], device=fused.device)
    # unlabelled samples: treat the whole image as "inside" (max target)
    inside = torch.where(labelled.view(-1, 1, 1, 1), inside, torch.ones_like(inside))
    target = inside * max_target + (1.0 - inside) * (vi + ir) * 0.5
    return _masked_mean((fused - target).abs(), _valid_float(valid, fused))


def fusion_loss(
    fused: Tensor,
    ir: Tensor,
    vi: Tensor,
    boxes: Sequence[Tensor | None] | None,
    load_loss: Tensor | float,
    alpha: float = 10.0,
    valid: Tensor | None = None,
    grad_target_scale: float = 1.0,
) -> dict[str, Tensor]:
    """Paper eq. 5: ``L_fusion = L_pixel + alpha * L_grad + L_load``.

    Args:
        load_loss: the already weighted load-balancing loss (``FusionOutput.load_loss``).
        alpha: gradient-loss weight (paper: 10).
        grad_target_scale: factor on the gradient target (:func:`gradient_loss`; paper 1).

    Returns:
        ``{"total", "pixel", "grad", "load"}`` scalars; ``grad`` is unweighted.
    """
    pixel = pixel_loss(fused, ir, vi, boxes, valid)
    grad = gradient_loss(fused, ir, vi, valid, target_scale=grad_target_scale)
    load = torch.as_tensor(load_loss, dtype=fused.dtype, device=fused.device)
    return {"total": pixel + alpha * grad + load, "pixel": pixel, "grad": grad, "load": load}
