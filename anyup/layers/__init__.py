"""Pure ``nn`` building blocks of AnyUp (no I/O, no weights handling, no execution planning)."""

from anyup.layers.blocks import EncoderStack, EncoderStackSpec, PointwiseConv2d, ReflectConv2d, ResBlock
from anyup.layers.feature_unification import FeatureUnification
from anyup.layers.norms import GroupNorm32, acc_dtype, rms_norm, rms_norm_linear
from anyup.layers.pooling import adaptive_avg_pool_2d, pool_ranges
from anyup.layers.rope import RoPE2d, pixel_coordinates
from anyup.layers.window_attention import CrossDecode, WindowCrossAttention

__all__ = [
    "CrossDecode",
    "EncoderStack",
    "EncoderStackSpec",
    "FeatureUnification",
    "GroupNorm32",
    "PointwiseConv2d",
    "ReflectConv2d",
    "ResBlock",
    "RoPE2d",
    "WindowCrossAttention",
    "acc_dtype",
    "adaptive_avg_pool_2d",
    "pixel_coordinates",
    "pool_ranges",
    "rms_norm",
    "rms_norm_linear",
]
