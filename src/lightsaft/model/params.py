"""The ``model`` section: the official ``DCUN_TFC_GPoCM_LightSAFT`` / ``..._LaSAFT`` arguments
(same names) plus ``variant``, and the shapes a U-Net can be built with.

It also validates the model params a weights file or an official checkpoint carries, so these
rules are the section's own (they see only the ``model`` keys).
"""

from __future__ import annotations

from typing import Any

from ..schema import Section, boolean, choice, fail, integer, list_of

ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid", "identity")
VARIANTS = ("lightsaft", "lasaft")  # the frequency transform of each block


def check_shapes(m: dict[str, Any]) -> None:
    """Constraints between model keys: the shapes the U-Net must be able to build."""
    if m["n_fft"] & (m["n_fft"] - 1):
        fail("model.n_fft", m["n_fft"], "must be a power of two (the U-Net halves n_fft//2 frequency bins per level)")
    if m["hop_length"] > m["n_fft"]:
        fail("model.hop_length", m["hop_length"], f"must not exceed n_fft ({m['n_fft']})")
    if m["n_blocks"] % 2 == 0:
        fail("model.n_blocks", m["n_blocks"], "must be odd: n encoder blocks, one middle block, n decoder blocks")
    levels = m["n_blocks"] // 2
    for axis in ("t_down_layers", "f_down_layers"):
        if m[axis] is not None and any(i >= levels for i in m[axis]):
            fail(f"model.{axis}", m[axis], f"level indices must be below n_blocks // 2 = {levels}")
    t_levels = levels if m["t_down_layers"] is None else len(set(m["t_down_layers"]))
    f_levels = levels if m["f_down_layers"] is None else len(set(m["f_down_layers"]))
    if m["num_frame"] % 2**t_levels:
        fail(
            "model.num_frame",
            m["num_frame"],
            f"must be divisible by 2**{t_levels} = {2**t_levels}, the U-Net's total "
            f"time downsampling with n_blocks = {m['n_blocks']}",
        )
    if (m["n_fft"] // 2) % 2**f_levels or m["n_fft"] // 2 < 2**f_levels:
        fail(
            "model.n_fft",
            m["n_fft"],
            f"n_fft // 2 must be divisible by 2**{f_levels}, the U-Net's total frequency "
            f"downsampling with n_blocks = {m['n_blocks']}",
        )
    for key in ("kernel_size_t", "kernel_size_f"):
        if m[key] % 2 == 0:
            fail(f"model.{key}", m[key], "must be odd so that the convolution keeps the tensor size")


MODEL = Section(
    "model",
    {
        "variant": ("lightsaft", choice(*VARIANTS)),
        "n_fft": (4096, integer(16)),
        "hop_length": (1024, integer(1)),
        "num_frame": (128, integer(2)),
        "spec_type": ("complex", choice("complex")),
        "spec_est_mode": ("mapping", choice("mapping", "masking")),
        "n_blocks": (9, integer(3)),
        "input_channels": (4, choice(4)),
        "internal_channels": (24, integer(1)),
        "first_conv_activation": ("relu", choice(*ACTIVATIONS)),
        "last_activation": ("identity", choice(*ACTIVATIONS)),
        "t_down_layers": (None, list_of(integer(0))),
        "f_down_layers": (None, list_of(integer(0))),
        "n_internal_layers": (5, integer(1)),
        "kernel_size_t": (3, integer(1)),
        "kernel_size_f": (3, integer(1)),
        "tfc_tdf_activation": ("relu", choice(*ACTIVATIONS)),
        "bn_factor": (16, integer(1)),
        "min_bn_units": (16, integer(1)),
        "tfc_tdf_bias": (True, boolean()),
        "num_tdfs": (16, integer(1)),
        "dk": (64, integer(1)),
        "control_vector_type": ("embedding", choice("embedding")),
        "control_input_dim": (4, choice(4)),
        "embedding_dim": (32, integer(1)),
        "control_n_layer": (4, integer(1)),
        "control_type": ("dense", choice("dense")),
        "condition_to": ("decoder", choice("decoder")),
        "pocm_type": ("matmul", choice("matmul")),
        "pocm_norm": ("batch_norm", choice("batch_norm", None)),
    },
    rules=(check_shapes,),
)
