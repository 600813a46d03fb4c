"""``anyup demo``: a local web page (Gradio) to look at PCA maps and attention of upsampled features.

>>> from anyup.demo import DemoConfig, launch                     # doctest: +SKIP
>>> launch(DemoConfig(input_size=224), port=7860)                 # doctest: +SKIP
"""

from __future__ import annotations

from anyup.demo.app import SAMPLES, DemoBackend, DemoConfig, Views, build_app, launch, local_weights, offline_encoders

__all__ = ["SAMPLES", "DemoBackend", "DemoConfig", "Views", "build_app", "launch", "local_weights", "offline_encoders"]
