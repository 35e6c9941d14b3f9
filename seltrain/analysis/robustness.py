"""Average- and worst-case robustness (Leavitt & Morcos 2020; METHODS.md section 5).

Common corruptions
------------------
The 15 corruptions of Hendrycks & Dietterich (ICLR 2019, "Benchmarking neural network
robustness to common corruptions and perturbations") at 5 severities, written in torch so they
run on the fly, on batches, on CPU or GPU, at the data's resolution. ``corrupt(x, name,
severity, generator)`` takes and returns float32 images in [0, 1] (unnormalised) of shape
[N, C, H, W] (C = 1 or 3) and is deterministic given the generator's seed; random numbers are
drawn on the CPU, so results do not depend on the device.

Parameters are the CIFAR-10-C tables (make_cifar_c.py in hendrycks/robustness). Lengths in
pixels (blur radii and sigmas, glass-blur displacement, motion-blur length) are scaled by
min(H, W) / 32 for larger images, so a 64 px dataset sees the same relative corruption;
smaller images (28 px) keep the 32 px values, because the smallest radii only work on the
pixel grid (defocus radius 1 is a 5-pixel cross; 0.875 would be a single pixel). Elastic
parameters are fractions of the image size in the table already. Where the reference used
an external tool we follow its algorithm: ImageMagick's motion blur (a one-sided Gaussian
line kernel of 2*ceil(radius)+1 taps at integer offsets, edge pixels repeated), PIL's BOX
resampling for pixelate, skimage's Gaussian filter (truncate 4, nearest border) for glass
blur, cv2's aliased disk for defocus, the diamond-square plasma fractal for fog, and JPEG
through torchvision (libjpeg). The reference's intermediate 8-bit rounding is kept only where
it is part of the corruption (glass blur, JPEG).

Frost is the one deliberate departure: the reference blends crops of six frost photographs,
which are not available offline. We synthesise a frost texture instead (a fractal haze plus
randomly oriented bright ice needles, tinted blue-white; ``frost_texture``) and blend it with
the reference weights (image * a + frost * b).

Severity and strength. Random draws are shared across the severities of one seed (the same
normal / uniform numbers scaled by each severity's parameters), so strength grows with
severity image by image, not only on average. The mean absolute difference from the clean
image grows strictly with severity for 11 corruptions. The other four follow their published
tables, which are not monotone in that measure (tests/unit_tests/test_analysis_robustness.py
asserts what each table does define):

- motion_blur: severities 3 and 4, (radius 6, sigma 2) and (8, 2), give the same image (the
  extra taps weigh < 1e-9).
- frost: from severity 3 the image is dimmed (a = 0.9, 0.85, 0.75) while the texture weight
  stays near 0.4; the texture-to-image ratio b/a, and so 1 - correlation with the clean
  image, grows strictly.
- glass_blur: (sigma, shift, passes) = (0.05,1,1), (0.25,1,1), (0.4,1,1), (0.25,1,2),
  (0.4,1,2); more blur smooths the swapped pixels, so severity 3 differs less from the clean
  image than 2, and 5 less than 4. A Fashion-MNIST CNN is also hurt least at severity 3.
- elastic_transform: a random affine warp that shrinks with severity (corners moved up to
  8% ... 3% of the size) plus an elastic field that grows (0 at severity 1); the non-affine
  displacement grows strictly, the pixel difference falls.

Attacks
-------
``fgsm`` and ``pgd_linf`` (Madry et al. 2018: random start in the eps-ball, signed-gradient
steps, projection) on the cross-entropy. Without ``mean``/``std`` they work in the model's
input space; with them, in pixel space: eps is in pixel units (e.g. 8/255) and images are
clamped to [0, 1]. Either way they take and return normalised inputs.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from seltrain.analysis.capture import eval_mode, iterate_batches, model_device, num_batches

# ---------------------------------------------------------------------------------------------
# Helpers: random numbers, padding, filtering, resampling
# ---------------------------------------------------------------------------------------------


def _rand(shape, g: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float32).to(like.device)


def _randn(shape, g: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32).to(like.device)


def _uniform(shape, lo: float, hi: float, g: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


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


def _gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0,
                   mode: str = "replicate") -> Tensor:
    k = _gaussian_kernel1d(sigma, truncate)
    if len(k) == 1:
        return x
    x = _filter2d(x, k[:, None], mode)
    return _filter2d(x, k[None, :], mode)


def _length_scale(x: Tensor) -> float:
    """Pixel lengths of the 32 px tables grow with larger images; smaller ones (28 px) keep
    them, as the smallest radii (defocus 1 px: a 5-pixel cross) only work on the pixel grid."""
    return max(1.0, min(x.shape[-2:]) / 32)


def _gray(x: Tensor) -> Tensor:
    """[N, 1, H, W] luma (ITU-R 601, as cv2.COLOR_RGB2GRAY) for RGB; the mean otherwise."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * w[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _zoom(x: Tensor, factors: Tensor) -> Tensor:
    """Zoom into the image centre by ``factors`` [N] (>= 1), bilinear, same size."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1 / factors
    theta[:, 1, 1] = 1 / factors
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _line_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick's MotionBlurImage: out(p) = sum_i w_i x(p + round(i * (cos a, sin a))),
    w_i ~ exp(-i^2 / (2 sigma^2)), i = 0 .. 2*ceil(radius), normalised; edges repeated."""
    taps = 2 * math.ceil(radius) + 1
    i = torch.arange(taps, dtype=torch.float64)
    w = torch.exp(-i ** 2 / (2 * sigma ** 2))
    w = (w / w.sum()).to(x)
    a = torch.deg2rad(angles_deg.to(torch.float64))
    dx = torch.round(i[None, :] * torch.cos(a)[:, None]).long().to(x.device)  # [N, taps]
    dy = torch.round(i[None, :] * torch.sin(a)[:, None]).long().to(x.device)
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


def _box_resize(x: Tensor, h: int, w: int) -> Tensor:
    mh = _box_matrix(x.shape[-2], h).to(x)
    mw = _box_matrix(x.shape[-1], w).to(x)
    return torch.einsum("oh,nchw,pw->ncop", mh, x, mw)


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


def frost_texture(n: int, channels: int, h: int, w: int, g: torch.Generator | None) -> Tensor:
    """Synthetic frost, [n, channels, h, w] in [0, 1] (float32, CPU): a soft fractal haze
    (diamond-square, decay 1.6) and short bright ice needles (sparse seeds drawn out along
    four random directions per image with the motion-blur kernel), tinted blue-white like
    the frost photographs of ImageNet-C."""
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


# ---------------------------------------------------------------------------------------------
# The 15 corruptions; each takes x [N, C, H, W] in [0, 1], severity 1..5 and a generator
# ---------------------------------------------------------------------------------------------


def gaussian_noise(x: Tensor, severity: int, g=None) -> Tensor:
    c = [0.04, 0.06, 0.08, 0.09, 0.10][severity - 1]
    return x + c * _randn(x.shape, g, x)


def shot_noise(x: Tensor, severity: int, g=None) -> Tensor:
    c = [500, 250, 100, 75, 50][severity - 1]
    # Photon counts: a Poisson draw with mean x * c, read back in [0, 1].
    return torch.poisson((x * c).float().cpu(), generator=g).to(x.device) / c


def impulse_noise(x: Tensor, severity: int, g=None) -> Tensor:
    c = [0.01, 0.02, 0.03, 0.05, 0.07][severity - 1]
    # Salt and pepper on a fraction c of the values (skimage random_noise 's&p', half each);
    # the same uniform draw at every severity makes the hit sets nested.
    hit, salt = _rand(x.shape, g, x), _rand(x.shape, g, x)
    return torch.where(hit < c, (salt < 0.5).to(x), x)


def defocus_blur(x: Tensor, severity: int, g=None) -> Tensor:
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][severity - 1]
    s = _length_scale(x)
    radius, alias = radius * s, alias * s
    # An aliased disk, smoothed by a small Gaussian (cv2.GaussianBlur, 3x3 up to radius 8,
    # 5x5 beyond), border reflected as cv2.filter2D does.
    half = math.ceil(radius) + 3
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius ** 2).double()
    disk /= disk.sum()
    ksize = 3 if radius <= 8 else 5
    k1 = torch.exp(-(torch.arange(ksize, dtype=torch.float64) - ksize // 2) ** 2 / (2 * alias ** 2))
    k1 /= k1.sum()
    kernel = F.conv2d(disk[None, None], (k1[:, None] * k1[None, :])[None, None],
                      padding=ksize // 2)[0, 0]
    nz = kernel.abs().sum(0).nonzero()
    lo, hi = int(nz.min()), int(nz.max())
    r = max(half - lo, hi - half)
    kernel = kernel[half - r:half + r + 1, half - r:half + r + 1]
    return _filter2d(x, kernel.float(), "reflect")


def glass_blur(x: Tensor, severity: int, g=None) -> Tensor:
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2),
                                (0.4, 1, 2)][severity - 1]
    s = _length_scale(x)
    sigma, delta = sigma * s, max(1, round(delta * s))
    out = torch.floor(_gaussian_blur(x, sigma).clamp(0, 1) * 255) / 255  # the reference's uint8
    n, _, h, w = x.shape
    batch = torch.arange(n, device=x.device)
    # Swap each pixel with a random neighbour at most ``delta`` away (randint(-delta, delta):
    # the upper end excluded), sweeping from the bottom-right corner as the reference does.
    for _ in range(iterations):
        for row in range(h - delta, delta, -1):
            for col in range(w - delta, delta, -1):
                d = torch.randint(-delta, delta, (2, n), generator=g).to(x.device)
                r2, c2 = row + d[1], col + d[0]
                a = out[batch, :, row, col].clone()
                out[batch, :, row, col] = out[batch, :, r2, c2]
                out[batch, :, r2, c2] = a
    return _gaussian_blur(out, sigma)


def motion_blur(x: Tensor, severity: int, g=None) -> Tensor:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][severity - 1]
    s = _length_scale(x)
    angles = _uniform(x.shape[0], -45, 45, g)
    return _line_blur(x, radius * s, sigma * s, angles)


def zoom_blur(x: Tensor, severity: int, g=None) -> Tensor:
    top = [1.06, 1.11, 1.16, 1.21, 1.26][severity - 1]
    factors = np.arange(1, top, 0.01)  # as the reference: 1.00, 1.01, ... (6 to 26 zooms)
    out = x.clone()
    for z in factors:
        out += _zoom(x, torch.full((x.shape[0],), float(z), dtype=x.dtype, device=x.device))
    return out / (len(factors) + 1)


def snow(x: Tensor, severity: int, g=None) -> Tensor:
    loc, scale, zoom, thresh, radius, sigma, blend = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][severity - 1]
    n, _, h, w = x.shape
    s = _length_scale(x)
    flakes = loc + scale * _randn((n, 1, h, w), g, x)
    flakes = _zoom(flakes, torch.full((n,), float(zoom), dtype=x.dtype, device=x.device))
    flakes = torch.where(flakes < thresh, torch.zeros_like(flakes), flakes).clamp(0, 1)
    flakes = _line_blur(flakes, radius * s, sigma * s, _uniform(n, -135, -45, g))
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + flakes + torch.rot90(flakes, 2, dims=(-2, -1))


def frost(x: Tensor, severity: int, g=None) -> Tensor:
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][severity - 1]
    texture = frost_texture(x.shape[0], x.shape[1], x.shape[2], x.shape[3], g).to(x)
    return a * x + b * texture


def fog(x: Tensor, severity: int, g=None) -> Tensor:
    strength, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][severity - 1]
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    haze = plasma_fractal(n, size, decay, g)[:, None, :h, :w].to(x)
    peak = x.flatten(1).max(1).values[:, None, None, None]
    return (x + strength * haze) * peak / (peak + strength)


def brightness(x: Tensor, severity: int, g=None) -> Tensor:
    c = [0.05, 0.1, 0.15, 0.2, 0.3][severity - 1]
    # Add c to HSV value at fixed hue and saturation: RGB scales with V; black becomes gray.
    v = x.max(1, keepdim=True).values
    v2 = (v + c).clamp(max=1)
    return torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x))


def contrast(x: Tensor, severity: int, g=None) -> Tensor:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][severity - 1]
    m = x.mean((2, 3), keepdim=True)
    return (x - m) * c + m


def elastic_transform(x: Tensor, severity: int, g=None) -> Tensor:
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][severity - 1]
    alpha, sigma, affine = alpha * size, sigma * size, affine * size
    # A random affine map: three points around the centre, each moved by up to ``affine`` px.
    cy, cx, sq = h // 2, w // 2, size // 3
    src = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]],
                       dtype=torch.float64)
    dst = src[None] + _uniform((n, 3, 2), -affine, affine, g)
    # Output pixel p samples the input at A p, A mapping dst -> src (cv2.warpAffine inverts).
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    A = torch.linalg.solve(torch.cat([dst, ones], 2), src[None].expand(n, 3, 2))  # [N, 3, 2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)
    warped = _sample(x, (pts @ A).reshape(n, h, w, 2))
    # Then a smooth random displacement field: uniform noise, Gaussian-filtered (truncate 3).
    field = _uniform((n, 2, h, w), -1, 1, g).float()  # drawn even when unused: same stream
    if alpha == 0:
        return warped
    field = _gaussian_blur(field, sigma, truncate=3.0, mode="symmetric") * alpha
    grid = torch.stack([xs[None] + field[:, 0].double(), ys[None] + field[:, 1].double()], -1)
    return _sample(warped, grid)


def _sample(x: Tensor, xy: Tensor) -> Tensor:
    """Bilinear sample ``x`` at pixel coordinates ``xy`` [N, H, W, 2] (x, y), mirrored borders."""
    h, w = x.shape[-2:]
    norm = torch.stack([2 * xy[..., 0] / max(w - 1, 1) - 1, 2 * xy[..., 1] / max(h - 1, 1) - 1], -1)
    return F.grid_sample(x, norm.to(x), mode="bilinear", padding_mode="reflection",
                         align_corners=True)


def pixelate(x: Tensor, severity: int, g=None) -> Tensor:
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    h, w = x.shape[-2:]
    return _box_resize(_box_resize(x, int(h * c), int(w * c)), h, w)


def jpeg_compression(x: Tensor, severity: int, g=None) -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    quality = [80, 65, 58, 50, 40][severity - 1]
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(list(u8), quality=quality), mode=ImageReadMode.UNCHANGED)
    return torch.stack(decoded).to(x.device).float() / 255


CORRUPTIONS: dict[str, Callable[[Tensor, int, torch.Generator | None], Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur,
    "zoom_blur": zoom_blur, "snow": snow, "frost": frost, "fog": fog,
    "brightness": brightness, "contrast": contrast, "elastic_transform": elastic_transform,
    "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
SEVERITIES = (1, 2, 3, 4, 5)


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator | None = None
            ) -> Tensor:
    """Corrupt images ``x`` [N, C, H, W] in [0, 1] with corruption ``name`` at ``severity``
    (1-5; 0 returns the images unchanged). Float32 in [0, 1], same shape and device.
    Pass a CPU ``torch.Generator`` for reproducible results."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption '{name}'; choose one of: {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0-5, got {severity}")
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.float()
    if severity == 0:
        return x.clone()
    return CORRUPTIONS[name](x, severity, generator).clamp(0, 1).float()


# ---------------------------------------------------------------------------------------------
# Normalisation and streams of perturbed batches
# ---------------------------------------------------------------------------------------------


def _stats(mean, std, x: Tensor) -> tuple[Tensor, Tensor] | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return m, s


def corrupted_batches(x, y=None, name: str = "gaussian_noise", severity: int = 1, *,
                      mean=None, std=None, seed: int = 0, batch_size: int = 256, device=None
                      ) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (corrupted x, y): normalised images are mapped to pixels with ``mean``/``std``
    (clamped to [0, 1]), corrupted and normalised again; without mean/std ``x`` is taken to be
    pixels in [0, 1] already. One generator seeded with ``seed`` runs through all batches."""
    g = torch.Generator().manual_seed(seed)
    for xb, yb in iterate_batches(x, y, batch_size):
        if device is not None:
            xb = xb.to(device)
        ms = _stats(mean, std, xb)
        pix = xb if ms is None else (xb * ms[1] + ms[0]).clamp(0, 1)
        out = corrupt(pix, name, severity, g)
        yield (out if ms is None else (out - ms[0]) / ms[1]), yb


def _attack(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
            random_start: bool, generator, mean, std) -> Tensor:
    ms = _stats(mean, std, x)
    x0 = x.detach() if ms is None else x.detach() * ms[1] + ms[0]
    p = x0.clone()
    if random_start and eps > 0:
        p = p + (2 * torch.rand(x.shape, generator=generator) - 1).to(x) * eps
    if ms is not None:
        p = p.clamp(0, 1)
    with eval_mode(model):
        for _ in range(steps):
            p.requires_grad_(True)
            logits = model(p if ms is None else (p - ms[0]) / ms[1])
            # summed, not averaged: the sign is the same, and no gradient underflows to 0
            loss = F.cross_entropy(logits, y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, p)
            p = p.detach() + step_size * grad.sign()
            p = x0 + (p - x0).clamp(-eps, eps)
            if ms is not None:
                p = p.clamp(0, 1)
    p = p.detach()
    return p if ms is None else (p - ms[0]) / ms[1]


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, mean=None, std=None) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): x + eps * sign(grad_x CE)."""
    return _attack(model, x, y.long(), eps, 1, eps, False, None, mean, std)


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10,
             step_size: float | None = None, *, random_start: bool = True,
             generator: torch.Generator | None = None, mean=None, std=None) -> Tensor:
    """L-inf projected gradient descent (Madry et al. 2018). ``step_size`` defaults to
    2.5 * eps / steps (Madry et al.'s rule)."""
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    return _attack(model, x, y.long(), eps, steps, step_size, random_start, generator, mean, std)


def adversarial_batches(model: nn.Module, x, y=None, eps: float = 8 / 255, *,
                        attack: str = "pgd", steps: int = 10, step_size: float | None = None,
                        random_start: bool = True, mean=None, std=None, seed: int = 0,
                        batch_size: int = 256, device=None
                        ) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (adversarial x, y) per batch for ``attack`` in {"fgsm", "pgd"}."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack '{attack}'; use 'fgsm' or 'pgd'")
    g = torch.Generator().manual_seed(seed)
    device = torch.device(device) if device is not None else model_device(model)
    for xb, yb in iterate_batches(x, y, batch_size):
        if yb is None:
            raise ValueError("attacks need labels: pass y, or batches of (x, y)")
        xb, yb = xb.to(device), torch.as_tensor(yb).long().to(device)
        if attack == "fgsm" or eps == 0:
            adv = fgsm(model, xb, yb, eps, mean=mean, std=std)
        else:
            adv = pgd_linf(model, xb, yb, eps, steps, step_size, random_start=random_start,
                           generator=g, mean=mean, std=std)
        yield adv, yb


def accuracy_under_corruptions(model: nn.Module, x, y=None, *, mean=None, std=None,
                               corruptions: Sequence[str] = tuple(CORRUPTIONS),
                               severities: Sequence[int] = SEVERITIES, seed: int = 0,
                               batch_size: int = 256, device=None) -> dict:
    """Accuracy on the clean data and under every corruption and severity, in one pass over
    the data. ``x`` holds normalised images (undone with ``mean``/``std``) or, without them,
    pixels in [0, 1]. Returns ``clean_acc``, ``accuracy`` ({name: [S]}),
    ``mean_corruption_accuracy`` (over all corruptions and severities), ``severities``."""
    device = torch.device(device) if device is not None else model_device(model)
    gens = {(c, s): torch.Generator().manual_seed(seed + 1000 * i)
            for i, c in enumerate(corruptions) for s in severities}
    hits = {k: 0 for k in gens}
    clean = total = 0
    with eval_mode(model), torch.no_grad():
        for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                           desc="corruptions", disable=None, leave=False):
            if yb is None:
                raise ValueError("accuracy needs labels: pass y, or batches of (x, y)")
            xb, yb = xb.to(device), torch.as_tensor(yb).cpu()
            ms = _stats(mean, std, xb)
            pix = xb if ms is None else (xb * ms[1] + ms[0]).clamp(0, 1)
            clean += int((model(xb).argmax(-1).cpu() == yb).sum())
            total += len(yb)
            for (c, s), g in gens.items():
                out = corrupt(pix, c, s, g)
                out = out if ms is None else (out - ms[0]) / ms[1]
                hits[(c, s)] += int((model(out).argmax(-1).cpu() == yb).sum())
    acc = {c: np.array([hits[(c, s)] / total for s in severities]) for c in corruptions}
    return {"clean_acc": clean / total, "accuracy": acc, "severities": list(severities),
            "corruptions": list(corruptions), "n_images": total,
            "mean_corruption_accuracy": float(np.mean([a.mean() for a in acc.values()]))}


def accuracy_under_attack(model: nn.Module, x, y=None, eps_list: Sequence[float] = (0, 1 / 255,
                          2 / 255, 4 / 255, 8 / 255), *, attack: str = "pgd", steps: int = 10,
                          step_size: float | None = None, random_start: bool = True,
                          mean=None, std=None, seed: int = 0, batch_size: int = 256,
                          device=None) -> dict:
    """Accuracy under ``attack`` ("fgsm" or "pgd") at each epsilon (eps = 0: clean), in one
    pass over the data. ``step_size`` defaults to 2.5 * eps / steps per epsilon. Returns
    ``eps``, ``accuracy[E]``, ``attack`` and the settings used."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack '{attack}'; use 'fgsm' or 'pgd'")
    device = torch.device(device) if device is not None else model_device(model)
    eps_list = [float(e) for e in eps_list]
    g = torch.Generator().manual_seed(seed)
    hits, total = np.zeros(len(eps_list)), 0
    for xb, yb in tqdm(iterate_batches(x, y, batch_size), total=num_batches(x, batch_size),
                       desc=f"{attack} attack", disable=None, leave=False):
        if yb is None:
            raise ValueError("attacks need labels: pass y, or batches of (x, y)")
        xb, yb = xb.to(device), torch.as_tensor(yb).long().to(device)
        for i, eps in enumerate(eps_list):
            if attack == "fgsm" or eps == 0:
                adv = fgsm(model, xb, yb, eps, mean=mean, std=std)
            else:
                adv = pgd_linf(model, xb, yb, eps, steps, step_size, random_start=random_start,
                               generator=g, mean=mean, std=std)
            with eval_mode(model), torch.no_grad():
                hits[i] += int((model(adv).argmax(-1) == yb).sum())
        total += len(yb)
    return {"attack": attack, "eps": eps_list, "accuracy": hits / max(total, 1),
            "n_images": total, "steps": steps if attack == "pgd" else 1,
            "step_size": step_size, "random_start": random_start if attack == "pgd" else False,
            "space": "pixel" if mean is not None else "input"}
