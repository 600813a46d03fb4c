"""The built-in upsampling methods: a declarative table (imported once, lazily, by :data:`anyup.baselines.METHODS`)."""

from __future__ import annotations

from anyup.baselines import MethodSpec, register
from anyup.baselines.interpolate import Interpolate, InterpolateConfig

register(
    MethodSpec(
        "nearest",
        "nearest-neighbour interpolation (pixel-centre aligned)",
        InterpolateConfig,
        lambda c: Interpolate("nearest", c),
        convex=True,
        guided=False,
    )
)
register(
    MethodSpec(
        "bilinear",
        "bilinear interpolation, align_corners=False",
        InterpolateConfig,
        lambda c: Interpolate("bilinear", c),
        convex=True,
        guided=False,
    )
)
register(
    MethodSpec(
        "bicubic",
        "bicubic interpolation, align_corners=False (may overshoot)",
        InterpolateConfig,
        lambda c: Interpolate("bicubic", c),
        convex=False,
        guided=False,
    )
)

from anyup.baselines.guided import GuidedFilterConfig, GuidedFilterUpsampler  # noqa: E402
from anyup.baselines.jbu import JBUConfig, JointBilateralUpsampler  # noqa: E402

register(
    MethodSpec(
        "jbu",
        "joint bilateral upsampling (Kopf et al. 2007), image-guided, training-free",
        JBUConfig,
        JointBilateralUpsampler,
        convex=True,
    )
)
register(
    MethodSpec(
        "guided_filter",
        "bilinear + guided filter (He et al. 2010), grey or colour guide",
        GuidedFilterConfig,
        GuidedFilterUpsampler,
        convex=False,
    )
)

from anyup.baselines import learned, peers  # noqa: E402

register(
    MethodSpec(
        "highres",
        "the encoder itself run on a factor-x larger input, features resized",
        learned.HighResConfig,
        learned.build_highres,
        convex=False,
        offline=False,
    )
)
register(
    MethodSpec(
        "anyup",
        "AnyUp, default the shipped anyup_offline weights (weights=anyup_multi_backbone: published)",
        learned.AnyUpMethodConfig,
        learned.build_anyup,
        convex=True,
    )
)
register(
    MethodSpec(
        "anyup_checkpoint",
        "AnyUp from any checkpoint file (config checkpoint=PATH)",
        learned.AnyUpCheckpointConfig,
        learned.build_anyup_checkpoint,
        convex=True,
    )
)
register(
    MethodSpec(
        "featup",
        "FeatUp JBU stack via torch.hub mhamilton723/FeatUp (backbone-specific)",
        peers.FeatUpConfig,
        peers.build_featup,
        offline=False,
    )
)
register(
    MethodSpec(
        "jafar",
        "JAFAR via torch.hub PaulCouairon/JAFAR (backbone-specific)",
        peers.JAFARConfig,
        peers.build_jafar,
        convex=True,
        offline=False,
    )
)
register(
    MethodSpec(
        "loftup",
        "LoftUp via torch.hub andrehuang/loftup (backbone-specific)",
        peers.LoftUpConfig,
        peers.build_loftup,
        offline=False,
    )
)
register(
    MethodSpec(
        "naf",
        "NAF via torch.hub valeoai/NAF (encoder-agnostic, needs natten)",
        peers.NAFConfig,
        peers.build_naf,
        offline=False,
    )
)
