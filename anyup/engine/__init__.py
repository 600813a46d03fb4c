"""How AnyUp runs: memory plan, chunked per-pixel encoders, tiled attention, attention backends.

The model (:mod:`anyup.model`) is the method; this package executes it within a memory cap:

* :mod:`~anyup.engine.plan` -- the documented memory model and the :class:`Plan` it picks;
* :mod:`~anyup.engine.pixels` -- full-resolution encoders as chunk GEMMs, GroupNorm statistics;
* :mod:`~anyup.engine.window` -- the locality rule (the one window-mask helper);
* :mod:`~anyup.engine.attention` -- attention backends by name (matmul, sdpa, flex, triton);
* :mod:`~anyup.engine.run` -- the driver (statistics, keys, tile decoder);
* :mod:`~anyup.engine.autograd` -- the checkpointed path used under autograd.
"""

from anyup.engine.attention import ATTENTION_CHOICES, BACKENDS, resolve
from anyup.engine.plan import Plan, default_max_memory, parse_memory
from anyup.engine.run import EngineOptions, Tile, iter_tiles, plan_for
from anyup.engine.window import Window, window_bounds

__all__ = [
    "ATTENTION_CHOICES",
    "BACKENDS",
    "EngineOptions",
    "Plan",
    "Tile",
    "Window",
    "default_max_memory",
    "iter_tiles",
    "parse_memory",
    "plan_for",
    "resolve",
    "window_bounds",
]
