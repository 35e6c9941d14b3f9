"""The common corruptions, as the released -C sets were made (Leavitt & Morcos 2020 use them;
docs/METHODS.md section 5).

The 15 corruptions of Hendrycks & Dietterich (ICLR 2019, "Benchmarking neural network
robustness to common corruptions and perturbations") and the 4 held-out extra ones (speckle
noise, Gaussian blur, spatter, saturate), at 5 severities, written in torch so they run on
the fly, on batches, on CPU or GPU. ``corrupt(x, name, severity, generator, table=...)`` takes
and returns float32 images in [0, 1] (unnormalised) of shape [N, C, H, W] (C = 1 or 3) and is
deterministic given the generator's seed; random numbers are drawn on the CPU, so results do
not depend on the device.

Tables. Each released set has its own parameters (``corruption_tables``: CIFAR-10-C, 32 px;
Tiny-ImageNet-C, 64 px; ImageNet-C, 224 px), chosen per dataset (``table_for``). Pixel
lengths (blur radii and sigmas, glass-blur shift, motion-blur length, the frost photographs'
scale) are the table's at its native size and scale by size / native for other sizes, except
that the CIFAR table keeps its values below 32 px (28 px Fashion-MNIST): its smallest radii
only work on the pixel grid (defocus radius 1 is a 5-pixel cross; 0.875 would be one pixel).
Elastic lengths are fractions of the image in every table and always scale with the size.

Every corruption follows the reference scripts' algorithm (hendrycks/robustness,
ImageNet-C/create_c/make_{cifar,tinyimagenet,imagenet}_c.py), quirks included where the
released files carry them:

- zoom blur: the scripts' ``clipped_zoom`` (make_cifar_c.py lines 112-122): a centre crop of
  ceil(size / z) whole pixels, scipy.ndimage.zoom of order 1 (whose grid maps the crop's first
  and last pixels onto the output's, so the effective zoom is slightly off z), trimmed back
  to the size. Snow's flake layer goes through the same function.
- glass blur: the scripts' "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` (lines 172-178)
  acts on numpy views of RGB pixels, so it copies the pixel at (h', w') over (h, w) and leaves
  (h', w') as it was: nothing is swapped. The released -C files were made that way, and so is
  this glass blur (a true swap, which seltrain did before, is ~40% stronger at CIFAR
  severity 1).
  The sequential sweep (bottom-right to top-left, a copied pixel may be copied on) is
  computed exactly, vectorised: each pixel follows its chain of copies (pointer doubling).
- frost: the six frost photographs of ImageNet-C, read from the ``imagecorruptions`` package
  (pip install seltrain[corruptions]; Apache-2.0) without importing it. Like the scripts, only
  the first five are ever drawn (``np.random.randint(5)``), after cv2.resize by the table's
  factor (0.2 CIFAR, 0.3 Tiny, none ImageNet). Without the package a procedural texture
  stands in (``frost_texture``), and ``frost_source()`` says so in every result.
- external tools, by their algorithms: ImageMagick's motion blur (a one-sided Gaussian line
  kernel of 2*ceil(radius)+1 taps at offsets ceil(i*(cos a, sin a) - 0.5), edge pixels
  repeated; its 8-bit PNG output rounded), PIL's BOX resampling for pixelate (rounded to 8
  bits as PIL does), skimage's Gaussian (truncate 4, nearest border), cv2's aliased disk and
  filter2D (reflect-101 border) for defocus, cv2's warpAffine for elastic, skimage's HSV for
  saturate, OpenCV's Canny, 5x5 chamfer distance transform and equalizeHist for spatter's
  water, the diamond-square plasma fractal for fog, JPEG through torchvision (libjpeg; the
  same decoded pixels as PIL's at the same quality, checked at 85, 25 and 7).

As released. The -C files hold 8-bit images: ``np.uint8(...)`` truncates (make_cifar_c.py
line 458), and Tiny-ImageNet-C / ImageNet-C were then saved as JPEG quality 85
(make_tinyimagenet_c.py line 118). ``released_format`` applies that storage step, and
``accuracy_under_corruptions`` does by default (``release_format=True``), so on-the-fly
numbers are comparable with the released files'.

Remaining deviations (each below 1/255 per pixel unless said): random numbers come from
torch, not numpy's global state; cv2's fixed-point arithmetic (warpAffine's 1/32-pixel
grid, resize's 11-bit weights) is computed in floating point; OpenCV's Canny, distance
transform and equalizeHist are re-implemented by their algorithms (spatter: up to 2 levels,
as its 8-bit distance map meets float rounding); non-square images are zoomed per
axis (the scripts assume squares); grayscale images follow ``imagecorruptions``' conventions
(frost and spatter colours converted to gray; saturate leaves gray unchanged, as replicating a
gray image to RGB and back does).

Severity and strength. Random draws are shared across the severities of one seed (the same
normal / uniform numbers scaled by each severity's parameters), so strength grows with
severity image by image, not only on average. Four tables are not monotone in the mean
absolute difference from the clean image (tests/unit_tests/test_analysis_robustness.py
asserts what each does define): motion blur (CIFAR severities 3 and 4 are the same image),
frost (the image is dimmed while the frost weight stays near 0.4), glass blur (more blur
smooths the copied pixels) and elastic (a shrinking affine warp traded for a growing elastic
field).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seltrain.analysis.corruption_tables import COMMON, EXTRA, CorruptionTable, get_table

__all__ = ["CORRUPTIONS", "EXTRA_CORRUPTIONS", "ALL_CORRUPTIONS", "SEVERITIES", "corrupt",
           "released_format", "release_format_name", "frost_source", "length_scale"]

# ---------------------------------------------------------------------------------------------
# Helpers: random numbers, padding, filtering, resampling
# ---------------------------------------------------------------------------------------------


def _rand(shape, g: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float32).to(like.device)


def _randn(shape, g: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device)


def _uniform(shape, lo: float, hi: float, g: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _to_8bit(x: Tensor, rounding: str = "round") -> Tensor:
    """Values in [0, 1] stored as 8 bits and read back: 'round' as PIL, ImageMagick and cv2
    write them, 'floor' as numpy's uint8 cast truncates (with a 1e-3 level tolerance, so a
    float32 k/255 that lands a hair below k is not dropped a level)."""
    v = x.clamp(0, 1) * 255
    v = torch.round(v) if rounding == "round" else torch.floor(v + 1e-3)
    return v.clamp(0, 255) / 255


def _pad_index(n: int, before: int, after: int, mode: str, device) -> Tensor:
    """Source indices for padding a length-n axis; any pad width (beyond n too).
    'symmetric': d c b a | a b c d (scipy 'reflect'); 'reflect': d c b | a b c d (cv2 default,
    scipy 'mirror'); 'replicate': a a a | a b c d."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "replicate" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        j = i % (2 * n)
        return torch.where(j >= n, 2 * n - 1 - j, j)
    if mode == "reflect":
        j = i % (2 * n - 2)
        return torch.where(j >= n, 2 * n - 2 - j, j)
    raise ValueError(mode)


def _pad(x: Tensor, ph: int, pw: int, mode: str) -> Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-2, _pad_index(h, ph, ph, mode, x.device))
    return x.index_select(-1, _pad_index(w, pw, pw, mode, x.device))


def _filter2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel with one 2-D kernel [kh, kw] (odd sizes), border ``mode``."""
    kh, kw = kernel.shape
    n, c, h, w = x.shape
    xp = _pad(x.reshape(n * c, 1, h, w), kh // 2, kw // 2, mode)
    if x.dtype == torch.float64 and kh * kw <= 9:
        # conv2d has no fast float64 path; a few shifted sums do (spatter's 3x3 filters)
        out = torch.zeros(n * c, 1, h, w, dtype=x.dtype, device=x.device)
        for i in range(kh):
            for j in range(kw):
                if kernel[i, j] != 0:
                    out += float(kernel[i, j]) * xp[..., i:i + h, j:j + w]
        return out.reshape(n, c, h, w)
    out = F.conv2d(xp, kernel.to(x)[None, None])
    return out.reshape(n, c, h, w)


def _gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5) if sigma > 0 else 0
    if radius == 0:
        return torch.ones(1, dtype=torch.float64)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter_matrix(n: int, k: Tensor, mode: str) -> Tensor:
    """The 1-D correlation with ``k`` (odd length) on a length-n axis, border ``mode``, as an
    [n, n] matrix: for kernels longer than the image (ImageNet-C's elastic sigma is 171 px at
    224 px) two matrix products beat a 1025-tap convolution by ~5x."""
    r = len(k) // 2
    src = _pad_index(n, r, r, mode, "cpu").unfold(0, len(k), 1)  # [n, taps]
    m = torch.zeros(n, n, dtype=torch.float64)
    m.scatter_add_(1, src, k[None].expand(n, -1).double())
    return m


def _gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0,
                   mode: str = "replicate") -> Tensor:
    k = _gaussian_kernel1d(sigma, truncate)
    if len(k) == 1:
        return x
    h, w = x.shape[-2:]
    if len(k) > 63 or x.dtype == torch.float64:  # conv2d has no fast float64 path
        mh, mw = _filter_matrix(h, k, mode).to(x), _filter_matrix(w, k, mode).to(x)
        return torch.einsum("ih,nchw,jw->ncij", mh, x, mw)
    x = _filter2d(x, k[:, None], mode)
    return _filter2d(x, k[None, :], mode)


def _gray(x: Tensor) -> Tensor:
    """[N, 1, H, W] luma (ITU-R 601, as cv2.COLOR_RGB2GRAY) for RGB; the mean otherwise."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * w[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _colour(rgb: Sequence[float], channels: int, like: Tensor) -> Tensor:
    """An RGB colour [1, C, 1, 1]; for one channel its gray (imagecorruptions' rgb2gray)."""
    c = torch.tensor(rgb, dtype=like.dtype, device=like.device)
    if channels == 1:
        c = (c * torch.tensor([0.2989, 0.5870, 0.1140], dtype=like.dtype,
                              device=like.device)).sum(0, keepdim=True)
    return c.reshape(1, -1, 1, 1)


def _linear_taps(positions: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Linear interpolation at ``positions`` (float64, already inside [0, n-1]) of a length-n
    axis: (left index, right index, right weight)."""
    i0 = positions.floor().clamp(0, n - 1)
    f = (positions - i0).clamp(0, 1)
    i0 = i0.long()
    return i0, (i0 + 1).clamp(max=n - 1), f


def _resample(x: Tensor, dim: int, taps: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Apply per-output linear ``taps`` along ``dim`` (-2 rows, -1 columns)."""
    i0, i1, f = taps
    f = f.to(x)
    f = f[:, None] if dim == -2 else f
    return (x.index_select(dim, i0.to(x.device)) * (1 - f)
            + x.index_select(dim, i1.to(x.device)) * f)


def _zoom_taps(n: int, z: float) -> tuple[Tensor, Tensor, Tensor]:
    """One axis of the scripts' ``clipped_zoom`` (make_cifar_c.py lines 112-122): crop
    ch = ceil(n / z) pixels starting at (n - ch) // 2; scipy.ndimage.zoom to round(ch * z)
    pixels, order 1, sampling the crop at k * (ch - 1) / (out - 1) (scipy's default grid maps
    corner pixel centres onto each other); keep n pixels from (out - n) // 2."""
    ch = int(math.ceil(n / z))
    top = (n - ch) // 2
    out = int(round(ch * z))
    trim = (out - n) // 2
    step = (ch - 1) / (out - 1) if out > 1 else 0.0
    pos = (torch.arange(n, dtype=torch.float64) + trim) * step
    i0, i1, f = _linear_taps(pos, ch)
    return i0 + top, i1 + top, f


def _clipped_zoom(x: Tensor, z: float) -> Tensor:
    """Zoom into the centre of ``x`` [N, C, H, W] by ``z`` (>= 1), the scripts' way; per
    axis, so non-square images keep their aspect (the scripts assume squares)."""
    h, w = x.shape[-2:]
    return _resample(_resample(x, -2, _zoom_taps(h, z)), -1, _zoom_taps(w, z))


def _line_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage: out(p) = sum_i w_i x(p + o_i), o_i = ceil(i * (cos a,
    sin a) - 0.5), w_i ~ exp(-i^2 / (2 sigma^2)), i = 0 .. 2*ceil(radius), normalised; edge
    pixels repeated."""
    taps = 2 * math.ceil(radius) + 1
    i = torch.arange(taps, dtype=torch.float64)
    w = torch.exp(-i ** 2 / (2 * sigma ** 2))
    w = (w / w.sum()).to(x)
    a = torch.deg2rad(angles_deg.to(torch.float64))
    dx = torch.ceil(i[None, :] * torch.cos(a)[:, None] - 0.5).long().to(x.device)  # [N, taps]
    dy = torch.ceil(i[None, :] * torch.sin(a)[:, None] - 0.5).long().to(x.device)
    n, c, h, wd = x.shape
    p = taps - 1
    xp = _pad(x, p, p, "replicate").permute(0, 2, 3, 1)  # [N, H+2p, W+2p, C]
    rows = torch.arange(h, device=x.device)[None, :, None] + p
    cols = torch.arange(wd, device=x.device)[None, None, :] + p
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = torch.zeros(n, h, wd, c, dtype=x.dtype, device=x.device)
    for k in range(taps):
        out += w[k] * xp[batch, rows + dy[:, k, None, None], cols + dx[:, k, None, None]]
    return out.permute(0, 3, 1, 2)


def _box_matrix(n_in: int, n_out: int) -> Tensor:
    """PIL's BOX resampling as a matrix [n_out, n_in]: each output pixel averages the input
    pixels whose centres fall inside its footprint (ImagingResample, precompute_coeffs)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / fscale
            if -0.5 <= t < 0.5:
                m[o, j] = 1.0
        m[o] /= m[o].sum()
    return m


def _box_resize(x: Tensor, h: int, w: int, pil_8bit: bool = False) -> Tensor:
    """PIL's BOX resize. ``pil_8bit``: as PIL does on 8-bit images, the horizontal pass first,
    each pass rounded half up to 8 bits."""
    mh = _box_matrix(x.shape[-2], h).to(x)
    mw = _box_matrix(x.shape[-1], w).to(x)
    if not pil_8bit:
        return torch.einsum("oh,nchw,pw->ncop", mh, x, mw)

    def to_8bit(v: Tensor) -> Tensor:
        return torch.floor(v * 255 + 0.5).clamp(0, 255) / 255

    x = to_8bit(torch.einsum("nchw,pw->nchp", x, mw))
    return to_8bit(torch.einsum("oh,nchp->ncop", mh, x))


def _cv2_linear_taps(n_in: int, fx: float) -> tuple[int, tuple[Tensor, Tensor, Tensor]]:
    """cv2.resize(..., fx=fx) with INTER_LINEAR along one axis: round(n * fx) outputs, source
    (d + 0.5) / fx - 0.5, clamped at the borders."""
    n_out = int(round(n_in * fx))
    pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) / fx - 0.5).clamp(0, n_in - 1)
    return n_out, _linear_taps(pos, n_in)


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, g: torch.Generator | None
                   ) -> Tensor:
    """``n`` diamond-square height maps [n, mapsize, mapsize] in [0, 1] (float64, CPU); mapsize
    is a power of two. Roughness falls by ``wibbledecay`` per octave (fog's second parameter)."""
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a: Tensor) -> Tensor:
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, g)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        sq = corners + torch.roll(corners, -1, 1)
        sq = sq + torch.roll(sq, -1, 2)
        m[:, half::step, half::step] = wibbled_mean(sq)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(centres + torch.roll(centres, 1, 1)
                                                 + corners + torch.roll(corners, -1, 2))
        m[:, half::step, 0::step] = wibbled_mean(centres + torch.roll(centres, 1, 2)
                                                 + corners + torch.roll(corners, -1, 1))
        step //= 2
        wibble /= wibbledecay
    flat = m.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (m - lo) / (hi - lo).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# Frost: the photographs, or the procedural fallback
# ---------------------------------------------------------------------------------------------

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg",
               "frost6.jpg")


@functools.lru_cache(maxsize=1)
def _frost_dir() -> str | None:
    """imagecorruptions/frost/ when the package is installed. find_spec locates a top-level
    package without importing it (imagecorruptions imports pkg_resources on import)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        return None
    for base in (spec.submodule_search_locations or []) if spec else []:
        d = os.path.join(base, "frost")
        if all(os.path.isfile(os.path.join(d, f)) for f in FROST_FILES):
            return d
    return None


def frost_source() -> str:
    """Where frost's texture comes from, for results to state."""
    d = _frost_dir()
    if d:
        return f"ImageNet-C frost photographs ({d})"
    return ("procedural texture (fallback: install seltrain[corruptions] for the ImageNet-C "
            "frost photographs)")


@functools.lru_cache(maxsize=16)
def _frost_photos(scale: float) -> tuple[Tensor, ...] | None:
    """The photographs as uint8 RGB [3, H, W], resized like cv2.resize(fx=fy=scale)
    (INTER_LINEAR; PNG alpha dropped as cv2.imread does); None without the package."""
    from PIL import Image

    d = _frost_dir()
    if d is None:
        return None
    photos = []
    for f in FROST_FILES:
        with Image.open(os.path.join(d, f)) as im:
            img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).double()
        if scale != 1:
            _, h, w = img.shape
            _, th = _cv2_linear_taps(h, scale)
            _, tw = _cv2_linear_taps(w, scale)
            img = _resample(_resample(img, -2, th), -1, tw).round()
        photos.append(img.clamp(0, 255).to(torch.uint8))
    return tuple(photos)


def frost_texture(n: int, channels: int, h: int, w: int, g: torch.Generator | None) -> Tensor:
    """Synthetic frost, [n, channels, h, w] in [0, 1] (float32, CPU), the fallback when the
    photographs are not installed: a soft fractal haze (diamond-square, decay 1.6) and short
    bright ice needles (sparse seeds drawn out along four random directions per image with
    the motion-blur kernel), tinted blue-white like the frost photographs of ImageNet-C."""
    size = 1 << (max(h, w, 2) - 1).bit_length()
    haze = plasma_fractal(n, size, 1.6, g)[:, None, :h, :w].float() ** 1.5
    s = max(1.0, min(h, w) / 32)
    needles = torch.zeros(n, 1, h, w)
    for _ in range(4):
        seeds = (torch.rand(n, 1, h, w, generator=g) < 0.04).float()
        seeds = seeds * (0.5 + 0.5 * torch.rand(n, 1, h, w, generator=g))
        angles = torch.rand(n, generator=g, dtype=torch.float64) * 360
        # sigma sets the needle length; x6 makes up for the kernel's normalisation
        needles = torch.maximum(needles, 6 * _line_blur(seeds, 4 * s, 2 * s, angles))
    frost = (0.6 * haze + needles).clamp(0, 1)
    tint = torch.tensor([0.82, 0.92, 1.0]) if channels == 3 else torch.full((channels,), 0.91)
    return frost * tint[None, :, None, None]


def _frost_layer(n: int, channels: int, h: int, w: int, scale: float,
                 g: torch.Generator | None) -> Tensor:
    """[n, channels, h, w] in [0, 1]: random crops of the photographs (the first five, as
    np.random.randint(5) draws), or the procedural texture."""
    photos = _frost_photos(scale)
    if photos is None:
        return frost_texture(n, channels, h, w, g)
    # The scripts crop photos larger than the image; a photo too small for a very large
    # image is enlarged to fit (as imagecorruptions does) rather than failing.
    need_h, need_w = h + 1, w + 1
    if any(p.shape[1] < need_h or p.shape[2] < need_w for p in photos[:5]):
        grow = max(max(need_h / p.shape[1], need_w / p.shape[2]) for p in photos[:5])
        photos = _frost_photos(scale * grow * 1.01)
    idx = torch.randint(0, 5, (n,), generator=g)
    out = torch.empty(n, 3, h, w)
    for i, k in enumerate(idx.tolist()):
        p = photos[k]
        top = int(torch.randint(0, p.shape[1] - h, (1,), generator=g))
        left = int(torch.randint(0, p.shape[2] - w, (1,), generator=g))
        out[i] = p[:, top:top + h, left:left + w].float() / 255
    if channels == 1:
        out = (out * torch.tensor([0.2989, 0.5870, 0.1140])[None, :, None, None]).sum(
            1, keepdim=True)
    return out


# ---------------------------------------------------------------------------------------------
# OpenCV operations used by spatter's water (OpenCV's algorithms, vectorised over a batch)
# ---------------------------------------------------------------------------------------------


def _canny(img: Tensor, low: int, high: int) -> Tensor:
    """cv2.Canny(img, low, high) for uint8-valued [N, 1, H, W] (float): 3x3 Sobel with
    replicated borders, L1 magnitude, non-maximum suppression in OpenCV's fixed-point sectors
    (tan 22.5 = 13573 / 2^15), hysteresis over 8-neighbours. Returns a bool edge map."""
    v = img.double()
    sx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx = _filter2d(v, sx, "replicate").round().long()
    gy = _filter2d(v, sx.T.contiguous(), "replicate").round().long()
    mag = gx.abs() + gy.abs()
    n, _, h, w = mag.shape
    mp = F.pad(mag, (1, 1, 1, 1))  # zeros beyond the image, as OpenCV's magnitude buffer

    def at(dy: int, dx: int) -> Tensor:
        return mp[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs() << 15
    tg22 = ax * 13573
    tg67 = tg22 + (ax << 16)
    horiz = ay < tg22
    vert = ~horiz & (ay > tg67)
    diag = ~horiz & ~vert
    s = torch.where((gx ^ gy) < 0, -1, 1)
    keep = horiz & (mag > at(0, -1)) & (mag >= at(0, 1))
    keep |= vert & (mag > at(-1, 0)) & (mag >= at(1, 0))
    # diagonal: the neighbours (row - 1, col - s) and (row + 1, col + s)
    d_same = (mag > at(-1, -1)) & (mag > at(1, 1))
    d_oppo = (mag > at(-1, 1)) & (mag > at(1, -1))
    keep |= diag & torch.where(s > 0, d_same, d_oppo)
    keep &= mag > low
    edges = keep & (mag > high)
    while True:
        grown = keep & (F.max_pool2d(edges.double(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _chamfer_distance(zero: Tensor, cap: float) -> Tensor:
    """cv2.distanceTransform(src, DIST_L2, 5) where ``zero`` marks src's zero pixels: the 5x5
    chamfer distance (float32 steps 1, 1.4 and 2.1969, OpenCV's float path), then THRESH_TRUNC
    at ``cap``. Found by relaxation: a distance <= cap is a path of at most cap steps, so
    cap + 1 min-plus passes reproduce OpenCV's two-pass values."""
    one, diag, knight = (torch.tensor(v, dtype=torch.float32) for v in (1.0, 1.4, 2.1969))
    limit = float(cap) + 3
    d = torch.where(zero, 0.0, limit).float()
    moves = [(0, 1, one), (1, 0, one), (0, -1, one), (-1, 0, one),
             (1, 1, diag), (1, -1, diag), (-1, 1, diag), (-1, -1, diag),
             (1, 2, knight), (2, 1, knight), (-1, 2, knight), (-2, 1, knight),
             (1, -2, knight), (2, -1, knight), (-1, -2, knight), (-2, -1, knight)]
    h, w = d.shape[-2:]
    for _ in range(int(cap) + 2):
        dp = F.pad(d, (2, 2, 2, 2), value=limit)
        new = d
        for dy, dx, cost in moves:
            new = torch.minimum(new, dp[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + cost)
        if torch.equal(new, d):
            break
        d = new
    return d.clamp(max=cap)


def _box3(x: Tensor) -> Tensor:
    """cv2.blur(x, (3, 3)) on float32: the 3x3 sum (reflect-101 border) times 1/9, in the
    order OpenCV takes (so a sum of 9 gives exactly 1, which the uint8 cast then keeps)."""
    s = _filter2d(x.double(), torch.ones(3, 3, dtype=torch.float64), "reflect")
    return (s * (1 / 9)).float().double()


def _equalize_hist(x: Tensor) -> Tensor:
    """cv2.equalizeHist on uint8-valued [N, 1, H, W]: the cumulative histogram above the
    lowest present level, scaled by 255 / (pixels - count at that level) in float32 and
    rounded; an image of one level stays as it is."""
    n = x.shape[0]
    v = x.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.long, device=x.device).scatter_add_(
        1, v, torch.ones_like(v))
    total = v.shape[1]
    first = (hist > 0).long().argmax(1)  # lowest present level
    first_count = hist.gather(1, first[:, None])
    cum = hist.cumsum(1) - first_count  # sum over (first, j]
    scale = (255.0 / (total - first_count).clamp_min(1).float())
    lut = torch.round(cum.float() * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=x.device)[None] <= first[:, None], 0.0, lut)
    flat = (first_count == total).expand(-1, 256)
    lut = torch.where(flat, first[:, None].float().expand(-1, 256), lut)
    return lut.gather(1, v).reshape(x.shape).to(x)


# ---------------------------------------------------------------------------------------------
# HSV as skimage.color computes it (saturate)
# ---------------------------------------------------------------------------------------------


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    v = x.max(1).values
    delta = v - x.min(1).values
    s = torch.where(delta == 0, 0, delta / v.where(v > 0, 1))
    safe = delta.where(delta > 0, 1)
    # skimage assigns red, then green, then blue: later ties win
    h = torch.zeros_like(v)
    h = torch.where(r == v, (g - b) / safe, h)
    h = torch.where(g == v, 2 + (b - r) / safe, h)
    h = torch.where(b == v, 4 + (r - g) / safe, h)
    h = torch.where(delta == 0, 0, (h / 6) % 1)
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.long() % 6
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t),
                                                      (p, q, v), (t, p, v), (v, p, q))])
    return table.gather(0, hi[None, :, None].expand(1, -1, 3, *hi.shape[1:]))[0]


# ---------------------------------------------------------------------------------------------
# The corruptions: fn(x [N, C, H, W] in [0, 1], p = the table's parameters at one severity,
# g = generator, k = scales for this image size)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scale:
    table: CorruptionTable
    length: float  # pixel lengths: size / native (the CIFAR table: at least 1)
    size: float    # size / native, for lengths that are fractions of the image (elastic)


def _scale_for(table: CorruptionTable, x: Tensor) -> _Scale:
    size = min(x.shape[-2:]) / table.native_size
    return _Scale(table, max(1.0, size) if table.name == "cifar" else size, size)


def gaussian_noise(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    return x + c * _randn(x.shape, g, x)


def shot_noise(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    # Photon counts: a Poisson draw with mean x * c, read back in [0, 1].
    return torch.poisson((x * c).float().cpu(), generator=g).to(x.device) / c


def impulse_noise(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    # Salt and pepper on a fraction c of the values (skimage random_noise 's&p', half each);
    # the same uniform draw at every severity makes the hit sets nested.
    hit, salt = _rand(x.shape, g, x), _rand(x.shape, g, x)
    return torch.where(hit < c, (salt < 0.5).to(x), x)


def speckle_noise(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    return x + x * c * _randn(x.shape, g, x)


def gaussian_blur(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    return _gaussian_blur(x, c * k.length)


def _defocus_kernel(radius: float, alias: float) -> Tensor:
    """The scripts' ``disk`` (make_cifar_c.py lines 34-46): an aliased disk on a 17 x 17 grid
    (radius <= 8; else 2*radius+1 wide), normalised, then cv2.GaussianBlur with a 3x3 kernel
    (5x5 beyond radius 8) of sigma ``alias`` and reflect-101 border, on the disk array."""
    half = 8 if radius <= 8 else math.ceil(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    k1 = torch.exp(-(torch.arange(ksize, dtype=torch.float64) - ksize // 2) ** 2
                   / (2 * alias ** 2))
    k1 /= k1.sum()
    out = _filter2d(disk[None, None], k1[:, None], "reflect")
    return _filter2d(out, k1[None, :], "reflect")[0, 0]


def defocus_blur(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    radius, alias = c[0] * k.length, c[1] * k.length
    kernel = _defocus_kernel(radius, alias)
    # cv2.filter2D, reflect-101 border; crop the kernel's zero rim (same result, less work)
    nz = kernel.abs().sum(0).nonzero()
    half = kernel.shape[0] // 2
    r = max(half - int(nz.min()), int(nz.max()) - half)
    return _filter2d(x, kernel[half - r:half + r + 1, half - r:half + r + 1].float(), "reflect")


def _glass_shuffle(img: Tensor, offsets: Tensor, delta: int) -> Tensor:
    """One pass of the scripts' local shuffle (make_cifar_c.py lines 171-178) on [N, C, H, W]:
    rows h = H - delta .. delta + 1 and, within each, columns w = W - delta .. delta + 1 in
    turn; pixel (h, w) gets a copy of pixel (h + dy, w + dx), ``offsets[n, h, w] = (dx, dy)``
    (each in [-delta, delta - 1]); the "swap" leaves (h + dy, w + dx) unchanged.

    Sequential semantics, computed at once: when (h + dy, w + dx) was already visited (dy > 0,
    or dy == 0 and dx > 0, inside the swept region) it holds its own copied value, so every
    pixel follows a chain of copies back to an unvisited pixel; pointer doubling finds each
    chain's end in log2(length) gathers."""
    n, c, h, w = img.shape
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    swept = ((rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta))
    dx = torch.where(swept, offsets[..., 0].long().cpu(), 0)
    dy = torch.where(swept, offsets[..., 1].long().cpu(), 0)
    src = ((rows + dy) * w + (cols + dx)).reshape(n, -1)
    visited_first = (swept.reshape(-1)[src] & ((dy > 0) | ((dy == 0) & (dx > 0))).reshape(n, -1)
                     & swept.reshape(1, -1))
    own = torch.arange(h * w).expand(n, -1)
    jump = torch.where(visited_first, src, own)  # a pixel whose source holds a copy follows it
    while True:
        nxt = jump.gather(1, jump)
        if torch.equal(nxt, jump):
            break
        jump = nxt
    final = src.gather(1, jump)  # the unvisited pixel at the chain's end (itself if unswept)
    final = final.to(img.device)
    return img.flatten(2).gather(2, final[:, None].expand(n, c, -1)).reshape(n, c, h, w)


def _glass(x: Tensor, sigma: float, delta: int, offsets: Sequence[Tensor]) -> Tensor:
    """Glass blur with its random shifts given, one [N, H, W, 2] tensor of (dx, dy) per pass
    (make_cifar_c.py lines 165-180)."""
    out = _to_8bit(_gaussian_blur(x, sigma), "floor")  # np.uint8(gaussian(x) * 255)
    for o in offsets:
        out = _glass_shuffle(out, o, delta)
    return _gaussian_blur(out, sigma)


def glass_blur(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    sigma, delta, passes = c
    sigma, delta = sigma * k.length, max(1, round(delta * k.length))
    n, _, h, w = x.shape
    # np.random.randint(-delta, delta, size=(2,)) per pixel: (dx, dy), the upper end excluded
    offsets = [torch.randint(-delta, delta, (n, h, w, 2), generator=g) for _ in range(passes)]
    return _glass(x, sigma, delta, offsets)


def _motion(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """Motion blur with its angles (degrees, [N]) given; ImageMagick writes 8 bits."""
    return _to_8bit(_line_blur(x, radius, sigma, angles))


def motion_blur(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    radius, sigma = c
    return _motion(x, radius * k.length, sigma * k.length, _uniform(x.shape[0], -45, 45, g))


def zoom_blur(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    stop, step = c
    factors = np.arange(1, stop, step)  # as the scripts: its length rounds up (1.00 .. 1.06)
    out = torch.zeros_like(x)
    for z in factors:
        out += _clipped_zoom(x, float(z))
    return (x + out) / (len(factors) + 1)


def _snow(x: Tensor, c: tuple, layer: Tensor, angles: Tensor, length: float) -> Tensor:
    """Snow (make_cifar_c.py lines 250-275) with its random draws given: ``layer``
    [N, 1, H, W] normal with the table's mean and std, ``angles`` [N] in degrees."""
    _, _, zoom, thresh, radius, sigma, blend = c
    flakes = _clipped_zoom(layer.to(x), zoom)
    flakes = torch.where(flakes < thresh, torch.zeros_like(flakes), flakes)
    flakes = _to_8bit(flakes, "floor")  # PIL 'L' image of astype(np.uint8), through PNG
    flakes = _motion(flakes, radius * length, sigma * length, angles)
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + flakes + torch.rot90(flakes, 2, dims=(-2, -1))


def snow(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    n, _, h, w = x.shape
    layer = c[0] + c[1] * _randn((n, 1, h, w), g, x)
    return _snow(x, c, layer, _uniform(n, -135, -45, g), k.length)


def frost(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    a, b = c
    n, ch, h, w = x.shape
    layer = _frost_layer(n, ch, h, w, k.table.frost_resize * k.length, g).to(x)
    return a * x + b * layer


def _fog(x: Tensor, strength: float, haze: Tensor) -> Tensor:
    peak = x.flatten(1).max(1).values[:, None, None, None]
    return (x + strength * haze) * peak / (peak + strength)


def fog(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    strength, decay = c
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()  # 32, 64, 256: the scripts' map sizes
    return _fog(x, strength, plasma_fractal(n, size, decay, g)[:, None, :h, :w].to(x))


def brightness(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    # Add c to HSV value at fixed hue and saturation: RGB scales with V; black becomes gray.
    v = x.max(1, keepdim=True).values
    v2 = (v + c).clamp(max=1)
    return torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x))


def contrast(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    m = x.mean((2, 3), keepdim=True)
    return (x - m) * c + m


def saturate(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    if x.shape[1] != 3:
        return x.clone()  # gray replicated to RGB has saturation 0 and hue 0: R stays V
    hsv = _rgb_to_hsv(x.double())
    hsv[:, 1] = (hsv[:, 1] * c[0] + c[1]).clamp(0, 1)
    return _hsv_to_rgb(hsv).to(x)


def _elastic_warp(x: Tensor, alpha: float, sigma: float, corner_shift: Tensor,
                  fields: Tensor) -> Tensor:
    """The scripts' elastic transform (make_cifar_c.py lines 383-413) with its random draws
    given: ``corner_shift`` [N, 3, 2] moves three points around the centre (x, y) before
    cv2.getAffineTransform / warpAffine (bilinear, reflect-101 border), and ``fields``
    [N, 2, H, W] (uniform in [-1, 1]: dx, dy) are Gaussian-filtered (skimage, 'reflect' border,
    truncate 3), scaled by alpha and sampled with map_coordinates (order 1, 'reflect')."""
    n, _, h, w = x.shape
    cy, cx, sq = h // 2, w // 2, min(h, w) // 3
    src = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]],
                       dtype=torch.float64)
    dst = src[None] + corner_shift.double()
    # Output pixel p samples the input at A p, A mapping dst -> src (cv2.warpAffine inverts).
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    A = torch.linalg.solve(torch.cat([dst, ones], 2), src[None].expand(n, 3, 2))  # [N, 3, 2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)
    warped = _sample(x, (pts @ A).reshape(n, h, w, 2), "reflect101")
    if alpha == 0:
        return warped
    field = _gaussian_blur(fields.double(), sigma, truncate=3.0, mode="symmetric") * alpha
    field = field.float().double()  # the scripts cast the displacements to float32
    grid = torch.stack([xs[None] + field[:, 0], ys[None] + field[:, 1]], -1)
    return _sample(warped, grid, "symmetric")


def elastic_transform(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    alpha, sigma, affine = (v * k.size for v in c)
    n, _, h, w = x.shape
    shift = _uniform((n, 3, 2), -affine, affine, g)
    fields = _uniform((n, 2, h, w), -1, 1, g)  # drawn even when unused: same stream
    return _elastic_warp(x, alpha, sigma, shift, fields)


def _sample(x: Tensor, xy: Tensor, border: str) -> Tensor:
    """Bilinear sample ``x`` at pixel coordinates ``xy`` [N, H, W, 2] (x, y). 'reflect101'
    mirrors about the edge pixels' centres (cv2 BORDER_REFLECT_101), 'symmetric' about the
    image edge (scipy's 'reflect')."""
    h, w = x.shape[-2:]
    if border == "reflect101":
        norm = torch.stack([2 * xy[..., 0] / max(w - 1, 1) - 1,
                            2 * xy[..., 1] / max(h - 1, 1) - 1], -1)
        corners = True
    else:
        norm = torch.stack([(2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1], -1)
        corners = False
    return F.grid_sample(x, norm.to(x), mode="bilinear", padding_mode="reflection",
                         align_corners=corners)


def pixelate(x: Tensor, c: float, g, k: _Scale) -> Tensor:
    h, w = x.shape[-2:]
    small = _box_resize(_to_8bit(x), int(h * c), int(w * c), pil_8bit=True)
    return _box_resize(small, h, w, pil_8bit=True)


def jpeg_compression(x: Tensor, c: int, g, k: _Scale) -> Tensor:
    return _jpeg(x, int(c))


def _jpeg(x: Tensor, quality: int) -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(list(u8), quality=quality), mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).to(x.device).float() / 255


def _spatter(x: Tensor, liquid: Tensor, c: tuple, length: float) -> Tensor:
    """The scripts' spatter (make_cifar_c.py lines 278-330) given its random layer ``liquid``
    [N, 1, H, W] (normal, mean c[0], std c[1]): blurred (sigma c[2]) and thresholded at c[3];
    then water (c[5] == 0: pale turquoise where a Canny / distance-transform / equalised /
    embossed map of the layer says so, at intensity c[4]) or mud (c[5] == 1: brown where the
    blurred (sigma c[4]) mask exceeds 0.8)."""
    _, _, sigma, thresh, strength, mud = c
    liquid = _gaussian_blur(liquid.double(), sigma * length)
    liquid = torch.where(liquid < thresh, 0, liquid)
    if not mud:
        level = torch.floor(liquid * 255).clamp(0, 255)  # astype(np.uint8)
        dist = _chamfer_distance(_canny(level, 50, 150), cap=20).double()
        dist = torch.floor(_box3(dist))  # cv2.blur, then astype(np.uint8)
        dist = _equalize_hist(dist)
        emboss = torch.tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=torch.float64)
        dist = torch.round(_filter2d(dist, emboss, "reflect")).clamp(0, 255)  # CV_8U output
        m = level * _box3(dist)
        top = m.amax((2, 3), keepdim=True)
        m = torch.where(top > 0, m / top.where(top > 0, 1), 0) * strength
        return x + m.to(x) * _colour((175 / 255, 238 / 255, 238 / 255), x.shape[1], x)
    m = _gaussian_blur((liquid > thresh).double(), strength * length)
    m = torch.where(m < 0.8, 0, m).to(x)
    return x * (1 - m) + m * _colour((63 / 255, 42 / 255, 20 / 255), x.shape[1], x)


def spatter(x: Tensor, c: tuple, g, k: _Scale) -> Tensor:
    n, _, h, w = x.shape
    return _spatter(x, c[0] + c[1] * _randn((n, 1, h, w), g, x), c, k.length)


_Fn = Callable[[Tensor, object, "torch.Generator | None", _Scale], Tensor]
CORRUPTIONS: dict[str, _Fn] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur,
    "zoom_blur": zoom_blur, "snow": snow, "frost": frost, "fog": fog,
    "brightness": brightness, "contrast": contrast, "elastic_transform": elastic_transform,
    "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
EXTRA_CORRUPTIONS: dict[str, _Fn] = {
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "spatter": spatter,
    "saturate": saturate,
}
SEVERITIES = (1, 2, 3, 4, 5)
ALL_CORRUPTIONS: dict[str, _Fn] = {**CORRUPTIONS, **EXTRA_CORRUPTIONS}
assert tuple(CORRUPTIONS) == COMMON and tuple(EXTRA_CORRUPTIONS) == EXTRA


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None,
            *, table: str | CorruptionTable = "cifar") -> Tensor:
    """Corrupt images ``x`` [N, C, H, W] in [0, 1] with corruption ``name`` (one of the 15
    common or 4 extra) at ``severity`` (1-5; 0 returns the images unchanged), with the
    parameters of ``table`` ("cifar", "tiny", "imagenet": ``corruption_tables``). Float32 in
    [0, 1], same shape and device. Pass a CPU ``torch.Generator`` for reproducible results."""
    if name not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption '{name}'; choose one of: "
                         f"{', '.join(ALL_CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0-5, got {severity}")
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.float()
    if severity == 0:
        return x.clone()
    tab = get_table(table)
    params = tab.params[name][severity - 1]
    return ALL_CORRUPTIONS[name](x, params, generator, _scale_for(tab, x)).clamp(0, 1).float()


def released_format(x: Tensor, table: str | CorruptionTable) -> Tensor:
    """Store corrupted images as the released files do: 8 bits by truncation
    (``np.uint8(corruption(img))``, make_cifar_c.py line 458), then for Tiny-ImageNet-C and
    ImageNet-C a JPEG at quality 85 (``Image.save(path, quality=85)``,
    make_tinyimagenet_c.py line 118, make_imagenet_c.py line 119)."""
    tab = get_table(table)
    x = _to_8bit(x, "floor")
    return _jpeg(x, tab.release_jpeg_quality) if tab.release_jpeg_quality else x


def release_format_name(table: str | CorruptionTable) -> str:
    q = get_table(table).release_jpeg_quality
    return "uint8 (truncated)" + (f", then JPEG quality {q}" if q else "")


def length_scale(table: str | CorruptionTable, size: int) -> float:
    """How ``table``'s pixel lengths scale for images of side ``size`` (module docstring)."""
    return _scale_for(get_table(table), torch.empty(1, 1, size, size)).length
