"""The ``anyup demo`` page: a local Gradio app to *look* at upsampled features.

Pick a sample photo or upload one, an encoder and layer, the AnyUp weights; see the PCA of the
low-res features | bilinear | AnyUp side by side (one PCA basis, fit on the low-res map, so the
colours are comparable), click a pixel of the AnyUp panel to see where it looks (AnyUp's attention
over the low-res tokens, overlaid on the image), and download the features (.safetensors).

It runs offline: the encoders whose weights ship in pip packages and the weights found locally
(``anyup_offline`` always; the published ones when their files are present).

Why Gradio: it is maintained, pip-installable, serves a local page with no build step or network
access, and gives image-click coordinates (``select`` events) and file downloads out of the box;
the peers' hosted demos use it too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "cat")
# Gradio asks no server for anything with these (usage analytics, version check).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "1"}


def offline_encoders() -> tuple[str, ...]:
    """Registered encoders whose real weights install offline (shipped in pip packages)."""
    from anyup.encoders import list_encoders

    return tuple(list_encoders(offline_only=True))


def local_weights() -> tuple[str, ...]:
    """AnyUp weight names whose files are on this machine (no download)."""
    from anyup.weights import DEFAULT_WEIGHTS, available_weights, resolve_weights

    names = []
    for name in available_weights():
        try:
            resolve_weights(name, download=False)
        except (FileNotFoundError, ValueError):
            continue
        names.append(name)
    return tuple(sorted(names, key=lambda n: (n != DEFAULT_WEIGHTS, n)))


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 (H, W, 3)."""
    if name not in SAMPLES:
        raise ValueError(f"sample must be one of {SAMPLES}, got {name!r}")
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError('sample photos need scikit-image: pip install "anyup[demo]"') from err
    arr = np.asarray(getattr(skimage.data, name)())
    return np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]


@dataclass(frozen=True)
class DemoConfig:
    """What the page offers."""

    encoders: tuple[str, ...] = ()  # default: offline_encoders()
    weights: tuple[str, ...] = ()  # default: local_weights(); a path is accepted too
    input_size: int = 224  # short side of the encoder input (the AnyUp panel has this size)
    device: str = "cpu"
    cache_size: int = 2  # (encoder, layer, weights) combinations kept loaded
    out_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="anyup-demo-"))


@dataclass
class Views:
    """What one run shows: uint8 (H, W, 3) panels, the features file, and what a click needs."""

    lowres: np.ndarray
    bilinear: np.ndarray
    anyup: np.ndarray
    attention: np.ndarray
    features_file: str
    state: dict


class DemoBackend:
    """Everything the page does, without the page (tests call it directly)."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.encoders = config.encoders or offline_encoders()
        self.weights = config.weights or local_weights()
        if not self.encoders or not self.weights:
            raise RuntimeError(f"nothing to show: encoders {self.encoders}, weights {self.weights}")
        self._cache: OrderedDict[tuple, object] = OrderedDict()

    def layers(self, encoder: str) -> tuple[list[str], str]:
        """(layer names, default layer) of a registered encoder."""
        from anyup.encoders import get_spec

        spec = get_spec(encoder)
        return [layer.name for layer in spec.layers], spec.default_layer

    def upsampler(self, encoder: str, layer: str, weights: str):
        from anyup.predictor import Upsampler

        key = (encoder, layer, weights)
        if key not in self._cache:
            self._cache[key] = Upsampler(
                encoder, weights, layers=layer, input_size=self.config.input_size, device=self.config.device
            )
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]

    def run(self, image: np.ndarray, encoder: str, layer: str, weights: str) -> Views:
        """PCA panels, centre-pixel attention and the features file of one photo (uint8 (H, W, 3))."""
        from anyup.predictor import save_result
        from anyup.viz.pca import pca_rgb, to_uint8_hwc

        if image is None:
            raise ValueError("pick a sample photo or upload one first")
        if encoder not in self.encoders:
            raise ValueError(f"encoder must be one of {self.encoders}, got {encoder!r}")
        if weights not in self.weights:
            raise ValueError(f"weights must be one of {self.weights}, got {weights!r}")
        up = self.upsampler(encoder, layer, weights)
        res = up(image)
        low = res.lowres[0].float()  # (C, h, w)
        hr = res.features[0].float()  # (C, H, W)
        h, w = hr.shape[-2:]
        bil = F.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        rgb_low, rgb_bil, rgb_up = pca_rgb([low, bil, hr], n_components=3, fit_index=0)
        big_low = F.interpolate(torch.from_numpy(rgb_low).permute(2, 0, 1)[None], size=(h, w), mode="nearest")
        path = Path(self.config.out_dir) / f"anyup_{encoder}_{layer}.safetensors"
        save_result([res], path, extra={"weights": weights})
        state = {"image": image, "encoder": encoder, "layer": layer, "weights": weights, "size": (h, w)}
        return Views(
            lowres=to_uint8_hwc(big_low[0].permute(1, 2, 0).numpy()),
            bilinear=to_uint8_hwc(rgb_bil),
            anyup=to_uint8_hwc(rgb_up),
            attention=self.attention(state, h // 2, w // 2),
            features_file=str(path),
            state=state,
        )

    def attention(self, state: dict, y: int, x: int) -> np.ndarray:
        """Where output pixel (y, x) of the AnyUp panel looks, over the guidance image: uint8 (H, W, 3)."""
        from anyup.viz.attention import attention_overlay

        if not state:
            raise ValueError("run a photo first, then click the AnyUp panel")
        h, w = state["size"]
        y, x = min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)
        up = self.upsampler(state["encoder"], state["layer"], state["weights"])
        maps, guide = up.attention(state["image"], [(y, x)])
        return attention_overlay(guide, maps[0], pixel=(y, x))


def build_app(config: DemoConfig | None = None):
    """The Gradio ``Blocks`` of the demo page (call ``.launch()`` on it)."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError('anyup demo needs gradio: pip install "anyup[demo]"') from err

    backend = DemoBackend(config or DemoConfig())
    enc0 = backend.encoders[0]
    layers0, default0 = backend.layers(enc0)

    def on_sample(name):
        return sample_photo(name)

    def on_encoder(encoder):
        names, default = backend.layers(encoder)
        return gr.update(choices=names, value=default)

    def on_run(image, encoder, layer, weights):
        try:
            v = backend.run(image, encoder, layer, weights)
        except (ValueError, RuntimeError, ImportError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from err
        return v.lowres, v.bilinear, v.anyup, v.attention, v.features_file, v.state

    def on_click(state, evt: gr.SelectData):
        x, y = evt.index  # Gradio gives (column, row) in image pixels
        try:
            return backend.attention(state, y, x)
        except (ValueError, RuntimeError) as err:
            raise gr.Error(str(err)) from err

    on_click.__annotations__["evt"] = gr.SelectData  # a real class: Gradio finds event parameters by type

    with gr.Blocks(title="AnyUp demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# AnyUp: look at upsampled features\n"
            "Pick or upload a photo, an encoder, a layer and the weights, then **Run**. The three panels share one "
            "PCA colour basis fit on the low-res features. **Click the AnyUp panel** to see where that pixel looks."
        )
        with gr.Row():
            with gr.Column(scale=1):
                sample = gr.Dropdown(list(SAMPLES), value=SAMPLES[0], label="sample photo", elem_id="sample")
                image = gr.Image(value=sample_photo(SAMPLES[0]), type="numpy", label="photo (upload your own)",
                                 sources=["upload", "clipboard"], height=320, elem_id="photo")  # fmt: skip
            with gr.Column(scale=1):
                encoder = gr.Dropdown(list(backend.encoders), value=enc0, label="encoder", elem_id="encoder")
                layer = gr.Dropdown(layers0, value=default0, label="layer", elem_id="layer")
                weights = gr.Dropdown(list(backend.weights), value=backend.weights[0], label="AnyUp weights",
                                      elem_id="weights")  # fmt: skip
                run = gr.Button("Run", variant="primary", elem_id="run-button")
                features = gr.File(label="features (.safetensors)", elem_id="features-file", interactive=False)
        with gr.Row():
            low_view = gr.Image(label="low-res (PCA)", interactive=False, elem_id="panel-lowres")
            bil_view = gr.Image(label="bilinear (PCA)", interactive=False, elem_id="panel-bilinear")
            up_view = gr.Image(label="AnyUp (PCA) - click a pixel", interactive=False, elem_id="panel-anyup")
            att_view = gr.Image(label="attention of the clicked pixel", interactive=False, elem_id="panel-attention")
        state = gr.State({})
        sample.change(on_sample, sample, image)
        encoder.change(on_encoder, encoder, layer)
        run.click(on_run, [image, encoder, layer, weights], [low_view, bil_view, up_view, att_view, features, state])
        up_view.select(on_click, state, att_view)
    return app


def launch(config: DemoConfig | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the demo page on ``http://host:port`` until interrupted."""
    config = config or DemoConfig()
    app = build_app(config)
    logger.info("anyup demo on http://%s:%d", host, port)
    app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, inbrowser=False, show_error=True,
               quiet=True, allowed_paths=[config.out_dir])  # fmt: skip
