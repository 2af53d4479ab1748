"""Load weights of the official implementation (ws-choi/Conditioned-Source-Separation-LaSAFT).

Official names follow its ``nn.Sequential`` indices (``tfc.H.0.1`` is a BatchNorm); ours name
what a tensor is (``tfc.layers.0.bn``). The mapping is a short list of rewrite rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

# (official pattern, our replacement); applied in order, first match wins.
_RULES = [
    (r"^(first_conv|downsamplings\.\d+|upsamplings\.\d+)\.0\.", r"\1.conv."),
    (r"^(first_conv|downsamplings\.\d+|upsamplings\.\d+)\.1\.", r"\1.bn."),
    (r"^last_conv\.0\.", "last_conv.0."),
    (r"^embedding\.", "embedding."),
    (r"^condition_generator\.dense_control_block\.linear\.", "control.mlp."),
    (r"^condition_generator\.linear_(gamma|beta)\.0\.", r"control.\1.linear."),
    (r"^condition_generator\.linear_(gamma|beta)\.2\.", r"control.\1.bn."),
    (r"^(.+)\.tfc\.H\.(\d+)\.0\.", r"\1.tfc.layers.\2.conv."),
    (r"^(.+)\.tfc\.H\.(\d+)\.1\.", r"\1.tfc.layers.\2.bn."),
    (r"^(.+)\.LaSAFT_bn_layer\.0\.", r"\1.saft.bottleneck.linear."),
    (r"^(.+)\.LaSAFT_bn_layer\.1\.", r"\1.saft.bottleneck.bn."),
    (r"^(.+)\.LaSIFT\.0\.", r"\1.saft.expand.linear."),
    (r"^(.+)\.LaSIFT\.1\.", r"\1.saft.expand.bn."),
    (r"^(.+)\.tdfs\.tdf\.0\.", r"\1.saft.tdf.0.linear."),
    (r"^(.+)\.tdfs\.tdf\.1\.", r"\1.saft.tdf.0.bn."),
    (r"^(.+)\.tdfs\.tdf\.3\.", r"\1.saft.tdf.1.linear."),
    (r"^(.+)\.tdfs\.tdf\.4\.", r"\1.saft.tdf.1.bn."),
    (r"^(.+)\.keys$", r"\1.saft.attention.keys"),
    (r"^(.+)\.linear_query\.", r"\1.saft.attention.query."),
]


def official_to_ours(key: str) -> str | None:
    """Our name (relative to the U-Net) for an official state_dict key, None if unknown."""
    for pattern, replacement in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load an official state_dict into our model, strictly.

    ``model`` is a :class:`Separator` (or its bare ``ConditionedUNet``). Every official key
    must map to one of ours with the same shape and every one of ours must be filled;
    otherwise a ``ValueError`` lists all offending keys.
    """
    net = getattr(model, "net", model)
    ours = net.state_dict()
    converted: dict[str, torch.Tensor] = {}
    first = None  # the first offending key in the file's order: usually the cause
    unknown, mismatched = [], []
    for key, tensor in state_dict.items():
        name = official_to_ours(key)
        if name is None or name not in ours:
            unknown.append(key if name is None else f"{key} (-> {name})")
            first = first or unknown[-1]
        elif tuple(ours[name].shape) != tuple(tensor.shape):
            mismatched.append(f"{key}: official {tuple(tensor.shape)} vs ours {tuple(ours[name].shape)}")
            first = first or mismatched[-1]
        else:
            converted[name] = tensor
    missing = sorted(set(ours) - set(converted) - {official_to_ours(k) for k in state_dict})
    problems = [
        ("unmatched official keys", unknown),
        ("shape mismatches", mismatched),
        ("our keys with no official value", missing),
    ]
    if any(items for _, items in problems):
        lines = [f"{title} ({len(items)}):\n  " + "\n  ".join(items) for title, items in problems if items]
        from ..errors import WeightsError

        first = first or f"{missing[0]} (ours, no official value)"
        raise WeightsError(
            f"official state_dict does not fit this model (check the model config): first mismatch at {first}\n"
            + "\n".join(lines)
        )
    net.load_state_dict(converted, strict=True)
