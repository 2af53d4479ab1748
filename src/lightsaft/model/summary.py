"""``lightsaft model-summary``: parameter count and per-layer output shapes of a config."""

from __future__ import annotations

import torch

from .unet import build_model, count_parameters


def model_summary(model_params: dict, batch: int = 1) -> str:
    """A table of every block's output shape for one ``num_frame`` window (meta tensors: instant)."""
    with torch.device("meta"):
        model = build_model(model_params).eval()
        spec = torch.zeros(batch, 4, model_params["num_frame"], model_params["n_fft"] // 2 + 1)
    net = model.net
    named = [("first_conv", net.first_conv)]
    named += [(f"encoders.{i}", m) for i, m in enumerate(net.encoders)]
    named += [(f"downsamplings.{i}", m) for i, m in enumerate(net.downsamplings)]
    named += [("mid_block", net.mid_block)]
    named += [(f"upsamplings.{i}", m) for i, m in enumerate(net.upsamplings)]
    named += [(f"decoders.{i}", m) for i, m in enumerate(net.decoders)]
    named += [("last_conv", net.last_conv)]
    rows: list[tuple[str, tuple, int]] = []
    hooks = [
        module.register_forward_hook(
            lambda m, i, o, name=name: rows.append((name, tuple(o.shape), count_parameters(m)))
        )
        for name, module in named
    ]
    with torch.no_grad():
        model(spec, torch.zeros(batch, dtype=torch.long, device="meta"))
    for hook in hooks:
        hook.remove()
    width = max(len(r[0]) for r in rows)
    lines = [
        f"LightSAFT model ({model_params['variant']}): {count_parameters(model):,} trainable parameters "
        f"({count_parameters(model) * 4 / 1e6:.1f} MB fp32)",
        f"input  [B, 4, T, F] = {list(spec.shape)}",
        "",
        f"{'layer'.ljust(width)}  {'output shape':<24} params",
    ]
    lines += [f"{name.ljust(width)}  {list(shape)!s:<24} {params:,}" for name, shape, params in rows]
    return "\n".join(lines)
