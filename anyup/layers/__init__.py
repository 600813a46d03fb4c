"""Pure ``nn`` building blocks of AnyUp (no I/O, no weights handling)."""

from anyup.layers.blocks import EncoderStack, EncoderStackSpec, PointwiseConv2d, ReflectConv2d, ResBlock
from anyup.layers.feature_unification import FeatureUnification
from anyup.layers.norms import StreamedGroupNorm, group_norm, rms_norm
from anyup.layers.pooling import adaptive_avg_pool_2d, pool_ranges
from anyup.layers.rope import RoPE2d, pixel_coordinates
from anyup.layers.window_attention import (
    WindowCrossAttention,
    dense_window_attention,
    dense_window_mask,
    window_bounds,
)

__all__ = [
    "EncoderStack",
    "EncoderStackSpec",
    "FeatureUnification",
    "PointwiseConv2d",
    "ReflectConv2d",
    "ResBlock",
    "RoPE2d",
    "StreamedGroupNorm",
    "WindowCrossAttention",
    "adaptive_avg_pool_2d",
    "dense_window_attention",
    "dense_window_mask",
    "group_norm",
    "pixel_coordinates",
    "pool_ranges",
    "rms_norm",
    "window_bounds",
]
