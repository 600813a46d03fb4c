"""Deprecated alias of :mod:`anyup.signals` (renamed in 0.2.0: ``anyup.baselines.guided`` is the guided
filter, this module upsamples masks, logits and depth). Each name warns once used; removed in the next release.
"""

from __future__ import annotations

from anyup import signals as _signals
from anyup._deprecation import deprecated_aliases

__getattr__ = deprecated_aliases(
    __name__, {name: (f"anyup.signals.{name}", getattr(_signals, name)) for name in _signals.__all__}
)
