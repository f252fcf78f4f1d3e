"""Convolutional image towers run in channels-last memory format (issue 13 item 1): oneDNN / cuDNN convolutions
in NHWC skip a layout reorder per layer (Lite0 at 160 px, 2 cores: 72 → 144 img/s fp32). ViTs keep the default
layout. The layout changes results only by float rounding, so it is recorded, not keyed."""

from __future__ import annotations

import copy

import torch


def test_lite0_runs_channels_last_with_the_same_features(emb_lite0):
    bb = emb_lite0
    assert bb.memory_format == "channels_last"
    conv = next(m for m in bb.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    real = bb._features

    def spy(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return real(x)

    x = torch.rand(3, 3, 160, 160) * 2 - 1
    bb._features = spy
    try:
        h, _z = bb.encode_images(x)
    finally:
        del bb._features
    assert seen == [True]
    ref_model = copy.deepcopy(bb.model).to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        ref = ref_model.forward_head(ref_model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(h, ref, rtol=1e-4, atol=1e-4)  # rounding only
    assert bb.compute_record()["memory_format"] == "channels_last"


def test_vits_keep_the_default_layout(emb_tiny):
    assert emb_tiny.memory_format == "contiguous"
    assert emb_tiny.compute_record()["memory_format"] == "contiguous"
