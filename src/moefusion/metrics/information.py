"""Mutual information of the fused image with both sources (sum over the two pairs)."""

from __future__ import annotations

import numpy as np

from moefusion.metrics.fused_only import entropy_bits


def _entropy(counts: np.ndarray, log: np.ufunc) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * log(p)))


def _merge_254_255(joint: np.ndarray) -> np.ndarray:
    """Joint (256, 256) counts with level 255 folded into 254 on both axes."""
    j = joint.copy()
    j[254, :] += j[255, :]
    j[255, :] = 0
    j[:, 254] += j[:, 255]
    j[:, 255] = 0
    return j


def mi_tang(joint_af: np.ndarray, joint_bf: np.ndarray) -> float:
    """TANG MI in bits, [H(A)+H(F)-H(A,F)] + [H(B)+H(F)-H(B,F)], from (256, 256) joint
    counts (source levels on axis 0, fused on axis 1).

    TANG's ``Hab.m`` indexes its joint histogram with ``grey + 1`` on uint8, which
    saturates 255 + 1 to 255: levels 254 and 255 share a joint bin (on both axes) while
    the marginal entropies keep them apart.
    """
    hf = entropy_bits(joint_af.sum(axis=0))
    out = 0.0
    for joint in (joint_af, joint_bf):
        out += entropy_bits(joint.sum(axis=1)) + hf - _entropy(_merge_254_255(joint), np.log2)
    return out


def _mi_nats(joint: np.ndarray) -> float:
    """sklearn ``mutual_info_score`` in nats from (256, 256) joint counts."""
    n = joint.sum()
    ra = joint.sum(axis=1)
    cb = joint.sum(axis=0)
    i, j = np.nonzero(joint)
    nz = joint[i, j].astype(np.float64)
    # sum p_ij ln(p_ij / (p_i p_j)) written with counts, as sklearn does.
    terms = (nz / n) * (np.log(nz) + np.log(n) - np.log(ra[i].astype(np.float64) * cb[j]))
    return max(float(terms.sum()), 0.0)


def mi_cddfuse(joint_af: np.ndarray, joint_bf: np.ndarray) -> float:
    """CDDFuse MI in nats (natural log), no bin merging: MI(F, A) + MI(F, B)."""
    return _mi_nats(joint_af) + _mi_nats(joint_bf)
