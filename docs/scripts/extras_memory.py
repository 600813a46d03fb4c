"""Peak memory of the optional extras of `anyup upsample` on a 2000x3000x112 float32 output."""

import resource
import time

import torch

from anyup.viz import pca_comparison, save_png
from anyup.viz.edges import bilinear_edge_alignment, edge_alignment


def rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


torch.manual_seed(0)
feats = torch.randn(1, 112, 2000, 3000)  # the size of the real output
low = torch.randn(1, 112, 28, 42)
image = torch.rand(1, 3, 2000, 3000)
base = rss_gib()
print(f"peak after allocating output + guide: {base:.2f} GiB", flush=True)
t = time.perf_counter()
a = edge_alignment(feats, image)
print(f"edge_alignment {a:.4f}: {time.perf_counter() - t:.1f} s, peak {rss_gib():.2f} GiB", flush=True)
t = time.perf_counter()
b = bilinear_edge_alignment(low, image)
print(f"bilinear_edge_alignment {b:.4f}: {time.perf_counter() - t:.1f} s, peak {rss_gib():.2f} GiB", flush=True)
t = time.perf_counter()
png = pca_comparison(image, low, feats)
save_png(png, "pca.png")
print(f"pca_comparison {png.shape}: {time.perf_counter() - t:.1f} s, peak {rss_gib():.2f} GiB", flush=True)
