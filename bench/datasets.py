"""Loaders for the labelled change-detection pairs in the shared data folder.

Evaluation only: the data are read in place from ``DATA_ROOT`` (default ``../shared/data``
relative to the repository root, overridable with the ``METRICCD_DATA`` environment variable)
and never copied into the repository.

Example::

    from bench.datasets import NAMES, load
    for name in NAMES:
        ds = load(name)  # ds.before / ds.after: (C, H, W) float32; ds.change, ds.labelled: (H, W) bool
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from metric_change_detection.core.errors import InputError
from osgeo import gdal

gdal.UseExceptions()

DATA_ROOT = Path(
    os.environ.get("METRICCD_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)

LEVIRCD_TILES: Tuple[str, ...] = (
    "test_2_0000_0000", "test_7_0256_0512", "train_386_0512_0768",
    "test_102_0512_0000", "test_121_0768_0256", "test_55_0256_0000",
)
DSIFN_TILES: Tuple[str, ...] = ("0_2", "1_1", "2_4", "4_4")
OSCD_CITIES: Tuple[str, ...] = ("abudhabi", "beihai", "hongkong", "mumbai", "pisa", "nantes")
OSCD_13BAND: Tuple[str, ...] = ("bercy", "nantes")
SZTAKI_PAIRS: Tuple[str, ...] = (
    "Szada_1", "Szada_2", "Szada_3", "Szada_4", "Tiszadob_1", "Tiszadob_2",
)
SAR = {
    "sar_ottawa": ("sar_ottawa/ottawa_1.bmp", "sar_ottawa/ottawa_2.bmp", "sar_ottawa/ottawa_gt.bmp"),
    "sar_yellowriver": (
        "sar_yellowriver/Yellow_River_1.bmp", "sar_yellowriver/Yellow_River_2.bmp",
        "sar_yellowriver/Yellow_River_gt.bmp",
    ),
    "sar_sanfrancisco": (
        "sar_sanfrancisco/san_1.bmp", "sar_sanfrancisco/san_2.bmp", "sar_sanfrancisco/san_gt.bmp",
    ),
}

NAMES: tuple[str, ...] = (
    ("oscd/lasvegas", "oscd/bercy-rgb")
    + tuple(f"oscd/{c}" for c in OSCD_CITIES)
    + tuple(f"oscd/{c}-13band" for c in OSCD_13BAND)
    + tuple(f"sztaki/{p}" for p in SZTAKI_PAIRS)
    + tuple(SAR)
    + ("landsat_taizhou",)
    + tuple(f"levircd/{tile}" for tile in LEVIRCD_TILES)
    + tuple(f"dsifn/{tile}" for tile in DSIFN_TILES)
)

#: The groups the benchmark averages over (kinds of imagery).
GROUPS: Tuple[str, ...] = ("OSCD RGB", "OSCD 13-band", "SZTAKI", "SAR", "Landsat", "LEVIR", "DSIFN")


def group(name: str) -> str:
    """The kind of imagery of a dataset name: one of ``GROUPS``."""
    if name.endswith("-13band"):
        return "OSCD 13-band"
    prefix = name.split("/")[0]
    return {"oscd": "OSCD RGB", "sztaki": "SZTAKI", "landsat_taizhou": "Landsat",
            "levircd": "LEVIR", "dsifn": "DSIFN"}.get(prefix, "SAR")

#: Sentinel-2 band order used for ``oscd/bercy-13band``.
S2_BANDS: Tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: Their centre wavelengths in micrometres (Sentinel-2A MSI), as GDAL's Sentinel-2 driver reports.
S2_WAVELENGTHS: Tuple[float, ...] = (
    0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190,
)


@dataclass
class Dataset:
    """A labelled bi-temporal pair on one pixel grid.

    Attributes:
        name: One of ``NAMES``.
        before: (C, H, W) float32 raw values of the first date.
        after: (C, H, W) float32 raw values of the second date.
        change: (H, W) bool, True where the pixel is labelled change.
        labelled: (H, W) bool, True where the pixel has a label (all True except sparse labels).
        wavelengths: Centre wavelength of each band in micrometres, where the source product
            records them (the raster pipeline then picks the feature extractor's composite).
    """

    name: str
    before: np.ndarray
    after: np.ndarray
    change: np.ndarray
    labelled: np.ndarray
    wavelengths: Optional[Tuple[float, ...]] = None

    @property
    def changed_fraction(self) -> float:
        """Fraction of the labelled pixels that are change."""
        n = int(self.labelled.sum())
        return float((self.change & self.labelled).sum() / n) if n else 0.0


def data_root() -> Path:
    """The shared data folder (``METRICCD_DATA`` when set at call time, else ``DATA_ROOT``)."""
    env = os.environ.get("METRICCD_DATA")
    return Path(env) if env else DATA_ROOT


def available(name: Optional[str] = None) -> bool:
    """Whether the files of ``name`` (or of every dataset when None) are present."""
    names = NAMES if name is None else (name,)
    return all(all(p.exists() for p in _required(n)) for n in names)


def _required(name: str) -> List[Path]:
    root = data_root()
    if name.endswith("-13band"):
        city = root / name[: -len("-13band")]
        return [city / "cm.png", city / "imgs_1", city / "imgs_2"]
    if name in _LOADERS:
        return [root / p for p in _FILES[name]]
    return []


def _read(path: Path, bands: Optional[List[int]] = None) -> np.ndarray:
    """Read a raster as (C, H, W) float32."""
    if not path.exists():
        raise InputError(f"Missing data file {path}; set METRICCD_DATA to the shared data folder.")
    ds = gdal.Open(str(path))
    try:
        indices = bands or list(range(1, ds.RasterCount + 1))
        return np.stack([ds.GetRasterBand(i).ReadAsArray() for i in indices]).astype(np.float32)
    finally:
        ds = None


def _mask(path: Path) -> np.ndarray:
    """First band of a label image, ``> 127`` as True."""
    return _read(path, [1])[0] > 127


def _dense(name: str, before: Path, after: Path, label: Path, bands: Optional[List[int]] = None) -> Dataset:
    b, a, change = _read(before, bands), _read(after, bands), _mask(label)
    return Dataset(name, b, a, change, np.ones_like(change))


def _s2_band(folder: Path, band: str, height: int, width: int) -> np.ndarray:
    """One Sentinel-2 band resampled (bilinear) onto the 10 m grid of size ``height x width``."""
    files = sorted(folder.glob(f"*_{band}.tif"))
    if len(files) != 1:
        raise InputError(f"Expected one *_{band}.tif in {folder}, found {len(files)}; check the data folder.")
    ref = sorted(folder.glob("*_B02.tif"))[0]  # the 10 m grid: its extent defines the target grid
    src = gdal.Open(str(files[0]))
    try:
        if (src.RasterYSize, src.RasterXSize) == (height, width):
            return src.GetRasterBand(1).ReadAsArray().astype(np.float32)
        rds = gdal.Open(str(ref))
        gt = rds.GetGeoTransform()
        bounds = (gt[0], gt[3] + gt[5] * rds.RasterYSize, gt[0] + gt[1] * rds.RasterXSize, gt[3])
        rds = None
        out = gdal.Warp(
            "", src, format="MEM", width=width, height=height, outputBounds=bounds,
            resampleAlg="bilinear", outputType=gdal.GDT_Float32,
        )
        arr = out.GetRasterBand(1).ReadAsArray().astype(np.float32)
        out = None
        return arr
    finally:
        src = None


def _oscd_13band(name: str) -> Dataset:
    root = data_root() / name[: -len("-13band")]
    change = _mask(root / "cm.png")
    h, w = change.shape
    dates = [np.stack([_s2_band(root / f"imgs_{d}", b, h, w) for b in S2_BANDS]) for d in (1, 2)]
    return Dataset(name, dates[0], dates[1], change, np.ones_like(change), S2_WAVELENGTHS)


def _taizhou(name: str) -> Dataset:
    root = data_root() / "landsat_taizhou"
    change = _mask(root / "change.bmp")
    unchanged = _mask(root / "unchanged.bmp")
    labelled = change ^ unchanged  # a pixel in both files is ambiguous: left unlabelled
    before = root / "2000TM"
    ds = gdal.Open(str(before))
    wavelengths = tuple(float(ds.GetRasterBand(i).GetMetadataItem("wavelength"))
                        for i in range(1, ds.RasterCount + 1))  # the ENVI header's, in micrometres
    ds = None
    return Dataset(name, _read(before), _read(root / "2003TM"), change & ~unchanged, labelled,
                   wavelengths)


_FILES: Dict[str, Tuple[str, ...]] = {
    "oscd/lasvegas": ("oscd/lasvegas/img1.png", "oscd/lasvegas/img2.png", "oscd/lasvegas/cm.png"),
    "oscd/bercy-rgb": ("oscd/bercy/img1.png", "oscd/bercy/img2.png", "oscd/bercy/cm.png"),
    **SAR,
    "landsat_taizhou": (
        "landsat_taizhou/2000TM", "landsat_taizhou/2003TM",
        "landsat_taizhou/change.bmp", "landsat_taizhou/unchanged.bmp",
    ),
}
_FILES.update(
    {
        f"levircd/{t}": (f"levircd/A/{t}.png", f"levircd/B/{t}.png", f"levircd/label/{t}.png")
        for t in LEVIRCD_TILES
    }
)
_FILES.update({f"dsifn/{t}": (f"dsifn/A/{t}.png", f"dsifn/B/{t}.png", f"dsifn/label/{t}.png")
               for t in DSIFN_TILES})
_FILES.update({f"oscd/{c}": (f"oscd/{c}/img1.png", f"oscd/{c}/img2.png", f"oscd/{c}/cm.png")
               for c in OSCD_CITIES})
_FILES.update({f"sztaki/{p}": (f"sztaki/{p}/im1.png", f"sztaki/{p}/im2.png", f"sztaki/{p}/gt.png")
               for p in SZTAKI_PAIRS})


def _dense_loader(name: str) -> Callable[[str], Dataset]:
    bands = [1] if name in SAR else None  # SAR bmp: three equal channels -> one band

    def loader(n: str) -> Dataset:
        root = data_root()
        before, after, label = (root / p for p in _FILES[name])
        return _dense(n, before, after, label, bands)

    return loader


_LOADERS: Dict[str, Callable[[str], Dataset]] = {
    n: _dense_loader(n) for n in _FILES if n != "landsat_taizhou"
}
_LOADERS["landsat_taizhou"] = _taizhou
_LOADERS.update({f"oscd/{c}-13band": _oscd_13band for c in OSCD_13BAND})


def load(name: str) -> Dataset:
    """Load one labelled pair by name.

    Args:
        name: One of ``NAMES``.

    Returns:
        The pair with raw float32 values and boolean change/labelled masks on one grid.

    Raises:
        InputError: Unknown name or missing files.
    """
    if name.startswith("nochange/"):
        return no_change(name)
    if name not in _LOADERS:
        raise InputError(f"Unknown dataset {name!r}; choose one of {', '.join(NAMES)}.")
    ds = _LOADERS[name](name)
    if ds.before.shape != ds.after.shape or ds.before.shape[1:] != ds.change.shape:
        raise InputError(
            f"Dataset {name!r} has inconsistent shapes {ds.before.shape}, {ds.after.shape}, "
            f"{ds.change.shape}; check the data files."
        )
    return ds


#: Sources and kinds of the generated pairs without change (see :func:`no_change`).
NO_CHANGE_SOURCES: Tuple[str, ...] = ("oscd/lasvegas", "sztaki/Szada_1", "sar_ottawa")
NO_CHANGE_KINDS: Tuple[str, ...] = ("identical", "shift-noise", "blur-noise")
NO_CHANGE: Tuple[str, ...] = tuple(
    f"nochange/{kind}/{source}" for source in NO_CHANGE_SOURCES for kind in NO_CHANGE_KINDS
)


def no_change(name: str, seed: int = 0) -> Dataset:
    """A pair where nothing changed, made from the before image of a shared pair.

    ``nochange/<kind>/<source>``: ``identical`` (an exact copy), ``shift-noise`` (after =
    0.9 x + 12 + N(0, 4): a radiometric change plus noise), ``blur-noise`` (a Gaussian blur of
    sigma 1 plus N(0, 3): a sharper and a softer acquisition). Every pixel is labelled no change.
    """
    from scipy.ndimage import gaussian_filter

    _, kind, source = name.split("/", 2)
    if kind not in NO_CHANGE_KINDS:
        raise InputError(f"Unknown no-change kind {kind!r}; choose one of {', '.join(NO_CHANGE_KINDS)}.")
    x = load(source).before
    rng = np.random.default_rng(seed)
    if kind == "identical":
        y = x.copy()
    elif kind == "shift-noise":
        y = 0.9 * x + 12 + rng.normal(0, 4, x.shape)
    else:
        y = np.stack([gaussian_filter(band, 1.0) for band in x]) + rng.normal(0, 3, x.shape)
    change = np.zeros(x.shape[1:], bool)
    return Dataset(name, x, y.astype(np.float32), change, np.ones_like(change))
