"""Synthetic indoor-ish scenes with exact ground truth, rendered on the CPU with pybullet.

Every scene: a textured floor and four textured walls (class ``background``), 3-7 objects of 7
categories (boxes, spheres, cylinders and pybullet's bundled duck, teddy, mug and torus meshes),
each with a random procedural texture and tint, random pose and size, random lighting with
shadows, and a camera at a random azimuth / elevation / distance looking at the scene centre.
pybullet's TinyRenderer returns the RGB image, the depth buffer (linearised here to metric
z-depth with the near/far planes) and the object-id mask (mapped to categories). Surface normals
are computed from the depth (back-projected neighbours, the side with the smaller depth jump,
never across objects or occlusion edges), in the camera frame x right / y down / z forward.

Scenes are a pure function of ``(seed, split, index)`` and cached on disk under
``$ANYUP_CACHE_DIR/synthetic/<version>-<params hash>`` (default ``~/.cache/anyup/synthetic``) as
memory-mapped ``.npy`` arrays, written to a temporary folder and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anyup._atomic import atomic_write, atomic_write_text
from anyup.eval.datasets.base import IGNORE_INDEX, DatasetConfig, DenseDataset, add_valid_masks

logger = logging.getLogger(__name__)

VERSION = "v2"  # bump whenever the rendering changes: it names the cache folder
CLASSES: tuple[str, ...] = ("background", "box", "sphere", "cylinder", "duck", "teddy", "mug", "torus")
SPLITS = {"train": 0, "val": 1, "test": 2}
NEAR, FAR = 0.05, 12.0
ROOM_HALF = 2.5  # walls at +-2.5 m
WALL_HALF_HEIGHT = 3.0
QUAD_UV_REPEATS = (3, 5, 8)  # texture repeats across a floor / wall quad (one chosen per surface)
N_TEXTURES = 48
TEXTURE_SIZE = 128
_MESHES = {  # class -> (pybullet_data file, kind)
    "duck": ("duck_vhacd.urdf", "urdf"),
    "teddy": ("teddy_vhacd.urdf", "urdf"),
    "mug": ("objects/mug.urdf", "urdf"),
    "torus": ("torus/torus_textured.obj", "mesh"),
}


@dataclass
class SyntheticConfig(DatasetConfig):
    num_train: int = 300
    num_val: int = 100
    num_test: int = 0
    resolution: int = 224  # rendered side (square images)
    seed: int = 0
    min_objects: int = 3
    max_objects: int = 7
    fov: float = 60.0  # vertical field of view in degrees
    cache_dir: str | None = None  # default: $ANYUP_CACHE_DIR/synthetic or ~/.cache/anyup/synthetic
    normal_edge: float = 0.1  # relative depth jump above which neighbours are not used for normals

    def generation_params(self) -> dict[str, Any]:
        keys = ("num_train", "num_val", "num_test", "resolution", "seed", "min_objects", "max_objects", "fov")
        return {k: getattr(self, k) for k in keys}


def _import_pybullet():
    try:
        import pybullet
        import pybullet_data
    except ImportError as err:
        raise ImportError(
            'the "synthetic" dataset renders with pybullet: pip install "anyup[eval]" (or pip install pybullet)'
        ) from err
    return pybullet, pybullet_data


# ----------------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random grid of ``cells`` x ``cells`` bicubically upsampled, tileable."""
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.random((cells, cells))).float()
    grid = torch.cat([grid, grid[:1]], 0)
    grid = torch.cat([grid, grid[:, :1]], 1)  # wrap for tiling
    up = F.interpolate(
        grid[None, None], size=(size + size // cells, size + size // cells), mode="bicubic", align_corners=True
    )[0, 0, :size, :size]
    up = (up - up.min()) / (up.max() - up.min() + 1e-8)
    return up.numpy()


def make_texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """One procedural RGB texture ``(size, size, 3)`` uint8: checker, stripes, noise, dots or rings."""
    kind = rng.integers(5)
    c0, c1 = rng.random(3), rng.random(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # checker
        n = int(rng.integers(2, 9))
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == 1:  # stripes at an angle that keeps the texture tileable
        kx, ky = int(rng.integers(0, 6)), int(rng.integers(1, 6))
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (kx * xx + ky * yy))
        t = (t > rng.uniform(0.3, 0.7)).astype(np.float32) if rng.random() < 0.5 else t
    elif kind == 2:  # smooth noise, two octaves
        t = 0.7 * _smooth_noise(rng, size, int(rng.integers(3, 8))) + 0.3 * _smooth_noise(rng, size, 16)
    elif kind == 3:  # dots
        n = int(rng.integers(3, 9))
        fx, fy = (xx * n) % 1 - 0.5, (yy * n) % 1 - 0.5
        t = (fx**2 + fy**2 < rng.uniform(0.04, 0.16)).astype(np.float32)
    else:  # wood-like rings distorted by noise
        r = np.hypot(xx - 0.5, yy - 0.5) * rng.uniform(6, 14) + 2.0 * _smooth_noise(rng, size, 4)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * r)
    grain = 0.08 * (_smooth_noise(rng, size, 32) - 0.5)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None] + grain[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- geometry
def intrinsics(resolution: int, fov_deg: float) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of the rendered square pinhole camera, for pixel centres at ``index + 0.5``.

    pybullet's TinyRenderer puts the optical axis half a pixel before the image centre
    (``cx = W/2 - 0.5``); measured: with it, back-projected floor pixels lie on the floor to 1e-6 m.
    """
    f = (resolution / 2) / math.tan(math.radians(fov_deg) / 2)
    c = resolution / 2 - 0.5
    return f, f, c, c


def backproject(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Camera-frame points ``(3, H, W)`` (x right, y down, z forward) from z-depth ``(H, W)``."""
    h, w = depth.shape
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([(jj - cx) / fx * depth, (ii - cy) / fy * depth, depth]).astype(np.float64)


def normals_from_depth(
    depth: np.ndarray, fx: float, fy: float, cx: float, cy: float, instance: np.ndarray | None = None, edge: float = 0.1
) -> np.ndarray:
    """Unit normals ``(3, H, W)`` float32 facing the camera, from z-depth; zeros where undefined.

    Per axis the tangent is the difference to the neighbour (left or right, up or down) with the
    smaller depth jump; neighbours in another ``instance``, with invalid depth or with a relative
    depth jump above ``edge`` are not used; a pixel without a usable neighbour on an axis is invalid.
    """
    p = backproject(depth, fx, fy, cx, cy)  # (3, H, W)
    valid = depth > 0
    inst = instance if instance is not None else np.zeros(depth.shape, dtype=np.int64)

    def tangent(axis: int) -> tuple[np.ndarray, np.ndarray]:
        def shifted(a: np.ndarray, k: int, fill) -> np.ndarray:
            out = np.full_like(a, fill)
            src = [slice(None)] * a.ndim
            dst = [slice(None)] * a.ndim
            ax = a.ndim - 2 + axis
            if k > 0:
                src[ax], dst[ax] = slice(k, None), slice(None, -k)
            else:
                src[ax], dst[ax] = slice(None, k), slice(-k, None)
            out[tuple(dst)] = a[tuple(src)]
            return out

        best, best_jump = np.zeros_like(p), np.full(depth.shape, np.inf)
        for k in (1, -1):
            q = shifted(p, k, 0.0)
            ok = shifted(valid, k, False) & valid & (shifted(inst, k, -2) == inst)
            jump = np.abs(q[2] - p[2]) / np.maximum(depth, 1e-6)
            ok &= jump <= edge
            jump = np.where(ok, jump, np.inf)
            better = jump < best_jump
            diff = (q - p) * k  # always "forward" along the axis
            best = np.where(better[None], diff, best)
            best_jump = np.where(better, jump, best_jump)
        return best, np.isfinite(best_jump)

    dx, okx = tangent(1)
    dy, oky = tangent(0)
    n = np.cross(dy, dx, axis=0)  # facing the camera (negative z for a fronto-parallel plane)
    norm = np.linalg.norm(n, axis=0)
    ok = okx & oky & (norm > 0)
    n = np.where(ok[None], n / np.maximum(norm, 1e-12)[None], 0.0)
    flip = (n * p).sum(0) > 0  # must face the camera
    n[:, flip] *= -1
    return n.astype(np.float32)


def view_to_opencv(view: np.ndarray) -> np.ndarray:
    """World -> OpenCV camera rotation ``(3, 3)`` from a pybullet (OpenGL, column-major list) view matrix."""
    v = np.asarray(view, dtype=np.float64).reshape(4, 4).T  # row-major world -> GL camera
    return np.diag([1.0, -1.0, -1.0]) @ v[:3, :3]


# ----------------------------------------------------------------------------- renderer
class SceneRenderer:
    """A pybullet DIRECT client that renders one random scene per call (deterministic in the rng)."""

    def __init__(
        self,
        resolution: int = 224,
        fov: float = 60.0,
        texture_dir: Path | None = None,
        texture_seed: int = 0,
        min_objects: int = 3,
        max_objects: int = 7,
    ) -> None:
        p, pybullet_data = _import_pybullet()
        self.p = p
        self.data_path = Path(pybullet_data.getDataPath())
        self.cid = p.connect(p.DIRECT)
        self.resolution, self.fov = resolution, fov
        self.min_objects, self.max_objects = min_objects, max_objects
        self._own_tex_dir = texture_dir is None
        self.texture_dir = Path(texture_dir) if texture_dir else Path(tempfile.mkdtemp(prefix="anyup_tex_"))
        self.texture_files = write_textures(self.texture_dir, texture_seed)
        self.quads = [write_quad(self.texture_dir / f"quad{r}.obj", r) for r in QUAD_UV_REPEATS]
        self._extent: dict[str, float] = {}

    def close(self) -> None:
        if self.cid is not None:
            self.p.disconnect(self.cid)
            self.cid = None
        if self._own_tex_dir:
            shutil.rmtree(self.texture_dir, ignore_errors=True)

    def __enter__(self) -> SceneRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- building blocks
    def _mesh_extent(self, cls: str) -> float:
        """Largest AABB side of a bundled mesh at scale 1 (measured once)."""
        if cls not in self._extent:
            body = self._load_mesh(cls, 1.0, [0, 0, 0], [0, 0, 0, 1])
            lo, hi = self.p.getAABB(body, physicsClientId=self.cid)
            self._extent[cls] = max(b - a for a, b in zip(lo, hi))
            self.p.removeBody(body, physicsClientId=self.cid)
        return self._extent[cls]

    def _load_mesh(self, cls: str, scale: float, pos, orn) -> int:
        p, cid = self.p, self.cid
        path, kind = _MESHES[cls]
        full = str(self.data_path / path)
        if kind == "urdf":
            return p.loadURDF(full, pos, orn, globalScaling=scale, useFixedBase=True, physicsClientId=cid)
        vs = p.createVisualShape(p.GEOM_MESH, fileName=full, meshScale=[scale] * 3, physicsClientId=cid)
        cs = p.createCollisionShape(p.GEOM_MESH, fileName=full, meshScale=[scale] * 3, physicsClientId=cid)
        return p.createMultiBody(0, cs, vs, pos, orn, physicsClientId=cid)  # collision shape: for getAABB

    def _primitive(self, shape: int, pos, orn, **kw) -> int:
        p, cid = self.p, self.cid
        vs = p.createVisualShape(shape, rgbaColor=[1, 1, 1, 1], physicsClientId=cid, **kw)
        if shape == p.GEOM_CYLINDER:  # the collision API names the cylinder length "height"
            kw = {"radius": kw["radius"], "height": kw["length"]}
        cs = p.createCollisionShape(shape, physicsClientId=cid, **kw)
        return p.createMultiBody(0, cs, vs, pos, orn, physicsClientId=cid)  # collision shape: for getAABB

    def _paint(self, body: int, tex: int, tint) -> None:
        p, cid = self.p, self.cid
        for link in range(-1, p.getNumJoints(body, physicsClientId=cid)):
            p.changeVisualShape(body, link, textureUniqueId=tex, rgbaColor=list(tint) + [1.0], physicsClientId=cid)

    def _make_object(self, cls: str, rng: np.random.Generator) -> int:
        p = self.p
        yaw = rng.uniform(0, 2 * np.pi)
        orn = p.getQuaternionFromEuler([0, 0, yaw])
        if cls == "box":
            return self._primitive(p.GEOM_BOX, [0, 0, 0], orn, halfExtents=list(rng.uniform(0.05, 0.18, 3)))
        if cls == "sphere":
            return self._primitive(p.GEOM_SPHERE, [0, 0, 0], orn, radius=float(rng.uniform(0.07, 0.18)))
        if cls == "cylinder":
            if rng.random() < 0.4:  # lying on its side
                orn = p.getQuaternionFromEuler([np.pi / 2, 0, yaw])
            return self._primitive(
                p.GEOM_CYLINDER,
                [0, 0, 0],
                orn,
                radius=float(rng.uniform(0.045, 0.12)),
                length=float(rng.uniform(0.12, 0.4)),
            )
        size = rng.uniform(0.2, 0.42)
        if cls == "torus" and rng.random() < 0.5:
            orn = p.getQuaternionFromEuler([np.pi / 2, 0, yaw])  # standing
        return self._load_mesh(cls, size / self._mesh_extent(cls), [0, 0, 0], orn)

    def render(self, rng: np.random.Generator) -> dict[str, Any]:
        """Build and render one scene; returns rgb (H,W,3) uint8, depth (H,W) float32 metres (0 =
        nothing hit), seg (H,W) uint8 class ids (255 = nothing hit), instance (H,W) int8
        (0 = background, k = k-th object), view (16,) pybullet view matrix, classes of objects."""
        p, cid, res = self.p, self.cid, self.resolution
        for cls in _MESHES:  # measure mesh sizes before the scene is reset below
            self._mesh_extent(cls)
        p.resetSimulation(physicsClientId=cid)
        textures = [p.loadTexture(str(f), physicsClientId=cid) for f in self.texture_files]

        def tex() -> int:
            return textures[int(rng.integers(len(textures)))]

        def tint(lo: float = 0.55) -> np.ndarray:
            return rng.uniform(lo, 1.0, 3)

        # Floor and walls: a unit quad whose UVs repeat the texture (scaled per scene).
        background = []
        pos: list[float]
        scale: list[float]
        for k in range(5):
            quad = self.quads[int(rng.integers(len(self.quads)))]  # texture period varies per surface
            if k == 0:
                pos, orn, scale = [0, 0, 0], [0, 0, 0, 1], [ROOM_HALF, ROOM_HALF, 1]
            else:
                ang = (k - 1) * np.pi / 2
                pos = [ROOM_HALF * np.cos(ang), ROOM_HALF * np.sin(ang), WALL_HALF_HEIGHT]
                orn = p.getQuaternionFromEuler([0, -np.pi / 2, ang])  # quad normal -> pointing into the room
                scale = [WALL_HALF_HEIGHT, ROOM_HALF, 1]
            vs = p.createVisualShape(
                p.GEOM_MESH, fileName=str(quad), meshScale=scale, rgbaColor=[1, 1, 1, 1], physicsClientId=cid
            )
            body = p.createMultiBody(0, -1, vs, pos, orn, physicsClientId=cid)
            self._paint(body, tex(), tint(0.7))
            background.append(body)

        n_obj = int(rng.integers(self.min_objects, self.max_objects + 1))
        placed: list[tuple[float, float, float]] = []
        objects: list[tuple[int, int]] = []  # (body id, class id)
        for _ in range(n_obj):
            cls_id = int(rng.integers(1, len(CLASSES)))
            body = self._make_object(CLASSES[cls_id], rng)
            lo, hi = p.getAABB(body, physicsClientId=cid)
            radius = 0.5 * math.hypot(hi[0] - lo[0], hi[1] - lo[1])
            for _attempt in range(30):  # rejection sampling of a free spot
                x, y = rng.uniform(-0.55, 0.55, 2)
                if all(math.hypot(x - a, y - b) > 0.85 * (radius + r) for a, b, r in placed):
                    break
            pos, orn = p.getBasePositionAndOrientation(body, physicsClientId=cid)
            centre = [(a + b) / 2 for a, b in zip(lo, hi)]
            new_pos = [pos[0] - centre[0] + x, pos[1] - centre[1] + y, pos[2] - lo[2]]  # rest on the floor
            p.resetBasePositionAndOrientation(body, new_pos, orn, physicsClientId=cid)
            self._paint(body, tex(), tint())
            placed.append((x, y, radius))
            objects.append((body, cls_id))

        target = [rng.normal(0, 0.1), rng.normal(0, 0.1), rng.uniform(0.02, 0.12)]
        dist, az, el = rng.uniform(0.8, 1.5), rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(18, 55))
        eye = [
            target[0] + dist * np.cos(el) * np.cos(az),
            target[1] + dist * np.cos(el) * np.sin(az),
            target[2] + dist * np.sin(el),
        ]
        view = p.computeViewMatrix(eye, target, [0, 0, 1], physicsClientId=cid)
        proj = p.computeProjectionMatrixFOV(self.fov, 1.0, NEAR, FAR, physicsClientId=cid)
        light_az, light_el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(30, 80))
        light = [np.cos(light_el) * np.cos(light_az), np.cos(light_el) * np.sin(light_az), np.sin(light_el)]
        _, _, rgba, zbuf, ids = p.getCameraImage(
            res,
            res,
            view,
            proj,
            renderer=p.ER_TINY_RENDERER,
            shadow=1,
            lightDirection=light,
            lightColor=list(rng.uniform(0.85, 1.0, 3)),
            lightDistance=4.0,
            lightAmbientCoeff=float(rng.uniform(0.35, 0.6)),
            lightDiffuseCoeff=float(rng.uniform(0.35, 0.65)),
            lightSpecularCoeff=float(rng.uniform(0.0, 0.3)),
            physicsClientId=cid,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(res, res, 4)[..., :3].copy()
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(res, res)
        ids = np.asarray(ids, dtype=np.int64).reshape(res, res)
        depth = (FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)).astype(np.float32)
        hit = ids >= 0
        depth[~hit] = 0
        seg = np.full((res, res), IGNORE_INDEX, dtype=np.uint8)
        instance = np.full((res, res), -1, dtype=np.int8)
        seg[np.isin(ids, background)] = 0
        instance[np.isin(ids, background)] = 0
        for k, (body, cls_id) in enumerate(objects, start=1):
            mask = ids == body
            seg[mask] = cls_id
            instance[mask] = k
        return {
            "rgb": rgb,
            "depth": depth,
            "seg": seg,
            "instance": instance,
            "view": np.asarray(view, dtype=np.float64),
            "classes": [c for _, c in objects],
        }


def write_textures(folder: Path, seed: int) -> list[Path]:
    """Write the procedural texture bank (PNG) into ``folder``; returns the files."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7919])
    files = []
    for i in range(N_TEXTURES):
        path = folder / f"tex{i:03d}.png"
        img = make_texture(rng)
        if not path.is_file():

            def write(tmp: str, img: np.ndarray = img) -> None:
                Image.fromarray(img).save(tmp, format="PNG")

            atomic_write(path, write)
        files.append(path)
    return files


def write_quad(path: Path, r: int) -> Path:
    """A square OBJ, x and y in [-1, 1] at z = 0, normal +z, UVs repeating the texture ``r`` times."""
    text = (
        "v 1 -1 0\nv 1 1 0\nv -1 1 0\nv -1 -1 0\n"
        f"vt {r} 0\nvt {r} {r}\nvt 0 {r}\nvt 0 0\n"
        "vn 0 0 1\n"
        "f 1/1/1 2/2/1 3/3/1\nf 1/1/1 3/3/1 4/4/1\n"
    )
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def render_scene(seed: int, split: str, index: int, renderer: SceneRenderer) -> dict[str, Any]:
    """Scene ``index`` of ``split``: a pure function of ``(seed, split, index)`` and the renderer settings."""
    return renderer.render(np.random.default_rng([seed, SPLITS[split], index]))


# ----------------------------------------------------------------------------- cache + dataset
def cache_root(config: SyntheticConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    from anyup._env import cache_dir

    return cache_dir() / "synthetic"


def cache_folder(config: SyntheticConfig) -> Path:
    params = json.dumps(config.generation_params(), sort_keys=True)
    digest = hashlib.sha1(params.encode()).hexdigest()[:12]
    return cache_root(config) / f"{VERSION}-{digest}"


def generate(config: SyntheticConfig) -> Path:
    """Render every split into the cache folder (atomically); returns the folder. Logs the time taken."""
    from tqdm import tqdm

    final = cache_folder(config)
    if (final / "meta.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent))
    t0 = time.perf_counter()
    counts = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    res = config.resolution
    try:
        with SceneRenderer(
            res, config.fov, tmp / "textures", config.seed, config.min_objects, config.max_objects
        ) as renderer:
            for split, n in counts.items():
                arrays = {
                    "rgb": np.lib.format.open_memmap(tmp / f"{split}_rgb.npy", "w+", np.uint8, (n, res, res, 3)),
                    "depth": np.lib.format.open_memmap(tmp / f"{split}_depth.npy", "w+", np.float32, (n, res, res)),
                    "seg": np.lib.format.open_memmap(tmp / f"{split}_seg.npy", "w+", np.uint8, (n, res, res)),
                    "instance": np.lib.format.open_memmap(tmp / f"{split}_instance.npy", "w+", np.int8, (n, res, res)),
                    "view": np.lib.format.open_memmap(tmp / f"{split}_view.npy", "w+", np.float64, (n, 16)),
                }
                for i in tqdm(
                    range(n), desc=f"rendering synthetic {split}", disable=n < 20, leave=False, mininterval=5.0
                ):
                    scene = render_scene(config.seed, split, i, renderer)
                    for key, arr in arrays.items():
                        arr[i] = scene[key]
                for arr in arrays.values():
                    arr.flush()
                del arrays
        seconds = time.perf_counter() - t0
        fx, fy, cx, cy = intrinsics(res, config.fov)
        meta = {
            "version": VERSION,
            "params": config.generation_params(),
            "classes": list(CLASSES),
            "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
            "near": NEAR,
            "far": FAR,
            "seconds": round(seconds, 2),
            "counts": counts,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "meta.json").is_file():
                raise
        logger.info("rendered synthetic dataset (%s images) in %.1f s into %s", sum(counts.values()), seconds, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class SyntheticScenes(DenseDataset):
    """Rendered scenes with exact per-pixel class, metric depth and normals (see module docstring).

    Items: ``image``, ``seg`` (8 classes, 255 where no surface), ``depth`` (metres, z-depth),
    ``normals`` (camera frame), the valid masks, ``instance`` (H, W) int64 (0 background, k = object
    k, -1 none) and ``name``. The first access renders and caches all splits.
    """

    config: SyntheticConfig

    name = "synthetic"
    tasks = ("seg", "depth", "normals")
    num_classes = len(CLASSES)
    class_names = CLASSES
    depth_metric = True

    def __init__(self, root: str | None = None, split: str = "val", config: SyntheticConfig | None = None) -> None:
        config = config or SyntheticConfig()
        super().__init__(split, config)
        if config.resolution < 16 or config.min_objects < 0 or config.max_objects < config.min_objects:
            raise ValueError(
                f"SyntheticConfig: need resolution >= 16 and 0 <= min_objects <= max_objects, got "
                f"{config.resolution}, {config.min_objects}, {config.max_objects}"
            )
        self.folder = generate(config)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.arrays = {
            k: np.load(self.folder / f"{split}_{k}.npy", mmap_mode="r")
            for k in ("rgb", "depth", "seg", "instance", "view")
        }
        self.items = list(range(self.arrays["rgb"].shape[0]))
        self._apply_limit()

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        k = self.meta["intrinsics"]
        return k["fx"], k["fy"], k["cx"], k["cy"]

    def load(self, index: int) -> dict[str, Any]:
        i = self.items[index]
        rgb = torch.from_numpy(np.array(self.arrays["rgb"][i])).permute(2, 0, 1).float() / 255.0
        depth = np.array(self.arrays["depth"][i])
        instance = np.array(self.arrays["instance"][i]).astype(np.int64)
        normals = normals_from_depth(depth, *self.intrinsics, instance=instance, edge=self.config.normal_edge)
        sample = {
            "image": rgb.contiguous(),
            "seg": torch.from_numpy(np.array(self.arrays["seg"][i]).astype(np.int64)),
            "depth": torch.from_numpy(depth),
            "normals": torch.from_numpy(normals),
            "instance": torch.from_numpy(instance),
            "name": f"{self.split}_{i:05d}",
        }
        return add_valid_masks(sample)

    def view_matrix(self, index: int) -> np.ndarray:
        """pybullet view matrix (16,) of item ``index`` (for tests and analyses)."""
        return np.array(self.arrays["view"][self.items[index]])
