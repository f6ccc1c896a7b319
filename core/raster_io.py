"""GDAL raster I/O: open and align an image pair, windowed reads with validity, atomic outputs.

The *before* image defines the grid: it is cropped to the intersection of the two extents,
and the *after* image is read on that grid (directly when the pixels already line up,
otherwise through an in-memory warped VRT). Nothing is loaded whole; every read is a window.

Outputs are written to a temporary file in the destination folder and renamed onto the final
path only by :meth:`AtomicRasterWriter.commit`, so a failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import stat
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union
from xml.sax.saxutils import escape

import numpy as np

from . import band_roles, timing
from .errors import InputError, MissingDependency
from .tiling import Window, tile_windows

try:
    from osgeo import gdal, osr
except ImportError:  # pragma: no cover - GDAL ships with QGIS
    raise MissingDependency(
        "The GDAL Python bindings (osgeo) are missing; install GDAL for this Python "
        "(e.g. 'apt install python3-gdal' or 'conda install gdal')."
    ) from None

gdal.UseExceptions()
osr.UseExceptions()

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PIXEL_GEOTRANSFORM: Tuple[float, ...] = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RESAMPLINGS = {"nearest": "near", "bilinear": "bilinear", "cubic": "cubic", "average": "average"}
STYLES_DIR = Path(__file__).resolve().parents[1] / "resources" / "styles"
DTYPES = {
    "uint8": gdal.GDT_Byte,
    "uint16": gdal.GDT_UInt16,
    "int16": gdal.GDT_Int16,
    "uint32": gdal.GDT_UInt32,
    "int32": gdal.GDT_Int32,
    "float32": gdal.GDT_Float32,
    "float64": gdal.GDT_Float64,
}
_DENSIFY = 21  # points per edge when transforming an extent between CRSs
FLOAT32_MAX = float(np.finfo(np.float32).max)
GEOTIFF_SUFFIXES = (".tif", ".tiff")  # what the writers produce: GeoTIFF rasters ...
GEOPACKAGE_SUFFIXES = (".gpkg",)  # ... and GeoPackage polygons
_FORMATS = {GEOTIFF_SUFFIXES: "GeoTIFF", GEOPACKAGE_SUFFIXES: "GeoPackage"}
# Side files GDAL or QGIS read beside a raster: appended to its name, or replacing its suffix.
_APPENDED_SIDECARS = (".msk", ".aux.xml", ".ovr", ".aux")
_REPLACED_SIDECARS = (".qml", ".wld", ".aux", ".prj")
_MAX_VRT_DEPTH = 8  # VRTs nested deeper are not followed when listing an input's files
_reader: List[ThreadPoolExecutor] = []
_reader_lock = threading.Lock()


def _after_reader() -> ThreadPoolExecutor:
    """One thread that reads (decodes) the after-date while the caller reads the before-date:
    GDAL releases the GIL, so the two dates decode on two cores (a 120 MP pair: 2x faster)."""
    with _reader_lock:
        if not _reader:
            _reader.append(ThreadPoolExecutor(1, thread_name_prefix="metriccd-read"))
        return _reader[0]


@dataclass(frozen=True)
class Grid:
    """A raster grid: size, GDAL geotransform and CRS as WKT ("" for pixel grids)."""

    width: int
    height: int
    geotransform: Tuple[float, ...]
    projection: str

    @property
    def georeferenced(self) -> bool:
        """False for a plain pixel grid (no CRS and GDAL's default geotransform)."""
        return bool(self.projection) or tuple(self.geotransform) != PIXEL_GEOTRANSFORM

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in map units (1 for pixel grids)."""
        gt = self.geotransform
        return abs(gt[1] * gt[5] - gt[2] * gt[4])

    def bounds(self) -> Tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of a north-up grid."""
        gt = self.geotransform
        xs = (gt[0], gt[0] + self.width * gt[1])
        ys = (gt[3], gt[3] + self.height * gt[5])
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class PairWindow:
    """One window of an aligned pair (invalid pixels are 0 and ``valid`` is False there).

    Attributes:
        before: (C, h, w) float32, the selected bands of the before image.
        after: (C, h, w) float32, the selected bands of the after image.
        fe_before: (3 or 1, h, w) float32, the bands fed to the feature extractor.
        fe_after: Same for the after image.
        valid: (h, w) bool, True where every used band of both dates holds valid data.
    """

    before: np.ndarray
    after: np.ndarray
    fe_before: np.ndarray
    fe_after: np.ndarray
    valid: np.ndarray


# --------------------------------------------------------------------------- helpers


def _label(role: str, path: PathLike) -> str:
    return f"{role} image '{Path(str(path)).name}'"


def _open(path: PathLike, role: str) -> gdal.Dataset:
    text = str(path)
    if not text.startswith("/vsi") and not Path(text).exists():
        raise InputError(
            f"{role} image '{text}' does not exist; check the path and that the file was not "
            "moved or renamed."
        )
    input_files(text)  # refuses named pipes and devices (reading one would hang)
    try:
        ds = gdal.Open(text, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise InputError(
            f"{_label(role, path)} cannot be read as a raster ({exc}); check that the file is "
            "complete and in a format GDAL reads (e.g. GeoTIFF), or export it again."
        ) from None
    if ds is None:
        raise InputError(
            f"{_label(role, path)} cannot be read as a raster; check that the file is complete "
            "and in a format GDAL reads (e.g. GeoTIFF)."
        )
    if ds.RasterCount < 1:
        raise InputError(
            f"{_label(role, path)} has no raster bands; if it contains subdatasets "
            "(NetCDF, HDF), open one of them instead."
        )
    return ds


def check_raster(path: PathLike, role: str) -> None:
    """InputError (naming what is wrong and the fix) unless ``path`` opens as a raster."""
    _open(path, role)


def span(window: Window) -> str:
    """A window as text: ``rows 0-199, columns 0-199``."""
    return (
        f"rows {window.row_off}\u2013{window.row_off + window.height - 1}, columns "
        f"{window.col_off}\u2013{window.col_off + window.width - 1}"
    )


# --------------------------------------------------------------------------- files


def special_kind(path: PathLike) -> Optional[str]:
    """``"a named pipe (FIFO)"``, ``"a device"`` or ``"a socket"`` for such a path, else None."""
    try:
        mode = os.stat(str(path)).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return None


def _sidecars(path: Path) -> List[Path]:
    """Side files GDAL or QGIS may read with ``path``: mask, PAM, overviews, world file, style."""
    files = [path.with_name(path.name + s) for s in _APPENDED_SIDECARS]
    files += [path.with_suffix(s) for s in _REPLACED_SIDECARS]
    ext = path.suffix[1:]
    if ext:
        files += [path.with_suffix(f".{ext[0]}{ext[-1]}w"), path.with_suffix(f".{ext}w")]
    return files


def _add_file(path: Path, found: Set[Path]) -> None:
    """Add an existing ``path`` and its existing side files; InputError for a pipe or device."""
    for item in [path, *_sidecars(path)]:
        if item in found or not item.exists():
            continue
        kind = special_kind(item)
        if kind:
            raise InputError(
                f"The input file '{item}' is {kind}, not a regular file, and reading it would "
                "wait forever; give the path of a raster file (or a GDAL /vsi path)."
            )
        found.add(item)


def _file_list(path: Path) -> Tuple[List[str], bool]:
    """GDAL's file list of the dataset at ``path`` and whether it is a VRT (([], False) if none)."""
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        ds = gdal.Open(str(path), gdal.GA_ReadOnly)
        names = (ds.GetFileList() or []) if ds is not None else []
        is_vrt = ds is not None and ds.GetDriver().ShortName == "VRT"
    except RuntimeError:
        return [], False
    finally:
        ds = None
        gdal.PopErrorHandler()
    return [n for n in names if n and not n.startswith("/vsi")], is_vrt


def _is_vrt_file(path: Path) -> bool:
    """Whether ``path`` is a VRT file (its sources are then followed; other files are not
    opened: their side files are found by name, which keeps a mosaic of many tiles cheap)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        return False
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<VRTDataset")


def _collect(path: Path, found: Set[Path], depth: int) -> None:
    """Add the files of the dataset at ``path``, following a VRT's sources."""
    names, is_vrt = _file_list(path)
    for name in names:
        entry = Path(name) if os.path.isabs(name) else path.parent / name
        entry = entry.resolve()
        if entry in found:
            continue
        _add_file(entry, found)
        if is_vrt and depth < _MAX_VRT_DEPTH and entry.is_file() and _is_vrt_file(entry):
            _collect(entry, found, depth + 1)


def input_files(path: PathLike) -> Set[Path]:
    """Every local file the raster at ``path`` consists of (none may be overwritten).

    GDAL's file list of the dataset (a VRT's sources followed, nested VRTs included) and the
    existing side files beside each: ``.msk``, ``.aux.xml``, ``.ovr``, ``.aux``, world files,
    ``.prj``, the QGIS style ``<stem>.qml``. Empty for a GDAL virtual path or a missing file.

    Raises:
        InputError: One of them is a named pipe, a device or a socket.
    """
    text = str(path)
    if not text or text.startswith("/vsi"):
        return set()
    top = Path(text).expanduser().resolve()
    if not top.exists():
        return set()
    found: Set[Path] = set()
    _add_file(top, found)
    if top.is_file():
        _collect(top, found, 0)
    return found


def _select(ds: gdal.Dataset, bands: Optional[Sequence[int]], label: str) -> Tuple[int, ...]:
    count = ds.RasterCount
    if bands is None:
        return tuple(range(1, count + 1))
    chosen = tuple(bands)
    if not chosen:
        raise InputError(
            f"No band of the {label} was selected; choose bands between 1 and {count}."
        )
    for b in chosen:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= count:
            raise InputError(
                f"The {label} has {count} band{'s' if count != 1 else ''} but band {b} was "
                f"selected; choose bands between 1 and {count}."
            )
    return tuple(int(b) for b in chosen)


def _check_types(ds: gdal.Dataset, bands: Sequence[int], label: str) -> None:
    for b in sorted(set(bands)):
        dt = ds.GetRasterBand(b).DataType
        if dt == gdal.GDT_Unknown or gdal.DataTypeIsComplex(dt):
            name = gdal.GetDataTypeName(dt) or "unknown"
            raise InputError(
                f"Band {b} of the {label} has the data type {name}, which is not a real number; "
                "convert it to a real-valued raster first (e.g. the amplitude with the Raster "
                "Calculator or gdal_calc.py)."
            )


def _georef(ds: gdal.Dataset) -> Tuple[Optional[Tuple[float, ...]], str]:
    gt = ds.GetGeoTransform(can_return_null=True)
    srs = ds.GetSpatialRef()
    wkt = srs.ExportToWkt() if srs is not None else ""
    return (tuple(gt) if gt is not None else None), wkt


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _same_crs(wkt_a: str, wkt_b: str) -> bool:
    if not wkt_a or not wkt_b:
        return True
    return bool(_srs(wkt_a).IsSame(_srs(wkt_b)))


def _edge_points(gt: Sequence[float], width: int, height: int) -> np.ndarray:
    """Map coordinates of points along the outline of a raster (densified)."""
    t = np.linspace(0.0, 1.0, _DENSIFY)
    cols = np.concatenate([t * width, np.full_like(t, width), t * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), t * height])
    x = gt[0] + cols * gt[1] + rows * gt[2]
    y = gt[3] + cols * gt[4] + rows * gt[5]
    return np.stack([x, y], axis=1)


def _bbox_in(points: np.ndarray, src_wkt: str, dst_wkt: str, label: str) -> np.ndarray:
    if src_wkt and dst_wkt and not _same_crs(src_wkt, dst_wkt):
        try:
            transform = osr.CoordinateTransformation(_srs(src_wkt), _srs(dst_wkt))
            moved = np.array(transform.TransformPoints(points.tolist()), dtype=np.float64)[:, :2]
        except RuntimeError as exc:
            raise InputError(
                f"The extent of the {label} cannot be transformed into the before image's CRS "
                f"({exc}); reproject one image to the other's CRS first."
            ) from None
        points = moved[np.isfinite(moved).all(axis=1)]
        if len(points) == 0:
            raise InputError(
                f"The extent of the {label} cannot be transformed into the before image's CRS; "
                "reproject one image to the other's CRS first."
            )
    x, y = points[:, 0], points[:, 1]
    return np.array([x.min(), y.min(), x.max(), y.max()])


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(repr(float(v)) for v in values)


def _validity_vrt(ds: gdal.Dataset, bands: Sequence[int]) -> gdal.Dataset:
    """One band, 1 where every listed band's GDAL mask (nodata/.msk/alpha) is valid."""
    path = escape(ds.GetDescription())

    def source(b: int) -> str:
        return (
            f'<ComplexSource><SourceFilename relativeToVRT="0">{path}</SourceFilename>'
            f"<SourceBand>mask,{b}</SourceBand><LUT>0:0,1:1,255:1</LUT></ComplexSource>"
        )

    unique = sorted(set(bands))
    if len(unique) == 1:
        band = f'<VRTRasterBand dataType="Byte" band="1">{source(unique[0])}</VRTRasterBand>'
    else:
        band = (
            '<VRTRasterBand dataType="Byte" band="1" subClass="VRTDerivedRasterBand">'
            "<PixelFunctionType>mul</PixelFunctionType><SourceTransferType>Float64"
            f"</SourceTransferType>{''.join(source(b) for b in unique)}</VRTRasterBand>"
        )
    gt, wkt = _georef(ds)
    head = f"<SRS>{escape(wkt)}</SRS>" if wkt else ""
    if gt is not None:
        head += f"<GeoTransform>{_fmt(gt)}</GeoTransform>"
    xml = (
        f'<VRTDataset rasterXSize="{ds.RasterXSize}" rasterYSize="{ds.RasterYSize}">'
        f"{head}{band}</VRTDataset>"
    )
    return gdal.Open(xml)


# --------------------------------------------------------------------------- sources


def _float32(values: np.ndarray, valid: np.ndarray, label: str, band: int) -> np.ndarray:
    """``values`` as float32; InputError where a valid value exceeds float32's range."""
    if values.dtype == np.float64:
        with np.errstate(invalid="ignore"):
            beyond = valid & np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)
        if beyond.any():
            peak = float(np.abs(values[beyond]).max())
            power = math.ceil(math.log10(peak)) - 30
            raise InputError(
                f"Band {band} of the {label} holds values up to {peak:.3g}, beyond the "
                f"\u00b1{FLOAT32_MAX:.3g} range of the 32-bit floats the processing uses; "
                f"rescale both images first, e.g. divide them by 1e{power} (gdal_calc.py or "
                "the Raster Calculator)."
            )
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(np.float32, copy=False)


class _DirectSource:
    """Bands of a dataset read at a pixel offset (no resampling), validity from GDAL masks."""

    def __init__(
        self, ds: gdal.Dataset, bands: Sequence[int], col: int, row: int, label: str = ""
    ) -> None:
        self.ds, self.bands, self.col, self.row = ds, list(bands), col, row
        self.label = label or _label("input", ds.GetDescription())

    def locate(self, window: Window) -> str:
        """Where ``window`` of the grid lies in this file."""
        return span(Window(self.col + window.col_off, self.row + window.row_off,
                           window.width, window.height))

    def read(
        self, window: Window, shape: Optional[Tuple[int, int]] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        h, w = shape or (window.height, window.width)
        box = (self.col + window.col_off, self.row + window.row_off, window.width, window.height)
        args = dict(buf_xsize=w, buf_ysize=h)
        valid = np.ones((h, w), bool)
        dataset_mask_done = False
        for b in self.bands:
            band = self.ds.GetRasterBand(b)
            flags = band.GetMaskFlags()
            if flags & gdal.GMF_ALL_VALID:
                continue
            if flags & gdal.GMF_PER_DATASET:
                if dataset_mask_done:
                    continue
                dataset_mask_done = True
            valid &= band.GetMaskBand().ReadAsArray(*box, **args) > 0
        data = np.empty((len(self.bands), h, w), np.float32)
        for i, b in enumerate(self.bands):
            values = self.ds.GetRasterBand(b).ReadAsArray(*box, **args)
            data[i] = _float32(values, valid, self.label, b)
        return data, valid


class _WarpedSource:
    """Bands warped onto the grid (VRT) with a separately warped validity band."""

    def __init__(
        self, data: gdal.Dataset, valid: gdal.Dataset, keep: List[object],
        bands: Sequence[int] = (), label: str = "",
    ) -> None:
        self.data, self.valid, self._keep = data, valid, keep
        self.bands = list(bands) or list(range(1, data.RasterCount + 1))
        self.label = label or "warped image"

    def locate(self, window: Window) -> str:
        """Where ``window`` lies (on the common grid the image is warped onto)."""
        return f"{span(window)} of the common grid"

    def read(
        self, window: Window, shape: Optional[Tuple[int, int]] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        h, w = shape or (window.height, window.width)
        args = dict(buf_xsize=w, buf_ysize=h)
        box = (window.col_off, window.row_off, window.width, window.height)
        valid = self.valid.GetRasterBand(1).ReadAsArray(*box, **args) > 0
        data = np.empty((self.data.RasterCount, h, w), np.float32)
        for i in range(self.data.RasterCount):
            values = self.data.GetRasterBand(i + 1).ReadAsArray(*box, **args)
            data[i] = _float32(values, valid, self.label, self.bands[i])
        return data, valid


Source = Union[_DirectSource, _WarpedSource]


# --------------------------------------------------------------------------- the pair


class AlignedPair:
    """Two rasters on one grid (the before image's, cropped to the common extent).

    Use :func:`open_pair` to create it; use as a context manager or call :meth:`close`.

    Attributes:
        grid: The common grid (size, geotransform, CRS).
        band_count: Number of selected bands per date.
        fe_band_count: Number of feature-extractor bands (1 or 3).
        before_path: Path of the before image.
        after_path: Path of the after image.
        bands_before: Selected 1-based bands of the before image.
        bands_after: Selected 1-based bands of the after image.
        fe_bands_before: 1-based bands of the before image fed to the feature extractor.
        fe_bands_after: Same for the after image.
        fe_choice: How the feature-extractor bands were chosen (``"as given"``,
            ``"swir1-nir-red by wavelength"``, ``"red-green-blue by wavelength"``,
            ``"first bands"``).
    """

    def __init__(
        self,
        before_path: str,
        after_path: str,
        grid: Grid,
        before: Source,
        after: Source,
        bands: Tuple[Tuple[int, ...], Tuple[int, ...]],
        fe_bands: Tuple[Tuple[int, ...], Tuple[int, ...]],
        read_bands: Tuple[List[int], List[int]],
        keep: List[object],
        fe_choice: str = "as given",
    ) -> None:
        self.before_path, self.after_path, self.grid = before_path, after_path, grid
        self._before, self._after = before, after
        self.bands_before, self.bands_after = bands
        self.fe_bands_before, self.fe_bands_after = fe_bands
        self.fe_choice = fe_choice
        self.band_count = len(bands[0])
        self.fe_band_count = len(fe_bands[0])
        self._index = [
            (
                [read_bands[d].index(b) for b in bands[d]],
                [read_bands[d].index(b) for b in fe_bands[d]],
            )
            for d in (0, 1)
        ]
        self._keep = keep

    def describe_fe_bands(self) -> str:
        """The feature-extractor bands as text: ``5,4,3`` (or ``5,4,3 / 6,5,4`` when they differ)."""
        before, after = (",".join(map(str, b)) for b in (self.fe_bands_before, self.fe_bands_after))
        return before if before == after else f"{before} / {after}"

    def __enter__(self) -> AlignedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the GDAL datasets."""
        self._before = self._after = None  # type: ignore[assignment]
        self._keep = []

    def _check(self, window: Window) -> None:
        if self._before is None:
            raise InputError("The raster pair is closed; open it again with open_pair().")
        g = self.grid
        if (
            window.width < 1 or window.height < 1 or window.col_off < 0 or window.row_off < 0
            or window.col_off + window.width > g.width or window.row_off + window.height > g.height
        ):
            raise InputError(
                f"The window at {span(window)} is not inside the {g.width}x{g.height} grid; use "
                "windows from tile_windows(grid.width, grid.height, ...)."
            )

    def _read_both(self, window: Window, shape: Optional[Tuple[int, int]] = None):
        pending = _after_reader().submit(self._read_one, self._after, self.after_path, window, shape)
        try:
            before, valid_b = self._read_one(self._before, self.before_path, window, shape)
        finally:
            after, valid_a = pending.result()  # never leave the after-date reading on its own
        valid = valid_b & valid_a
        valid &= np.isfinite(before).all(axis=0) & np.isfinite(after).all(axis=0)
        before[:, ~valid] = 0.0
        after[:, ~valid] = 0.0
        return before, after, valid

    @staticmethod
    def _read_one(source: Source, path: str, window: Window, shape) -> Tuple[np.ndarray, np.ndarray]:
        try:
            return source.read(window, shape)
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())
            raise InputError(
                f"Reading {source.locate(window)} of '{Path(path).name}' failed ({reason}); the "
                "file may be corrupt or truncated: check it with gdalinfo -checksum or export "
                "it again."
            ) from None

    def read(self, window: Window) -> PairWindow:
        """Read one window of both dates on the common grid."""
        self._check(window)
        with timing.stage("read"):
            before, after, valid = self._read_both(window)
        (sel_b, fe_b), (sel_a, fe_a) = self._index
        return PairWindow(
            before=np.ascontiguousarray(before[sel_b]),
            after=np.ascontiguousarray(after[sel_a]),
            fe_before=np.ascontiguousarray(before[fe_b]),
            fe_after=np.ascontiguousarray(after[fe_a]),
            valid=valid,
        )

    def sample_windows(self, size: int, count: int, rng: np.random.Generator) -> List[Window]:
        """``count`` random ``size`` x ``size`` windows inside the grid (size clamped to it)."""
        if size < 1 or count < 0:
            raise InputError(f"sample_windows needs size >= 1 and count >= 0, got {size}, {count}.")
        w, h = min(size, self.grid.width), min(size, self.grid.height)
        cols = rng.integers(0, self.grid.width - w + 1, count)
        rows = rng.integers(0, self.grid.height - h + 1, count)
        return [Window(int(c), int(r), w, h) for c, r in zip(cols, rows)]

    def has_valid_pixels(self, preview: int = 512) -> bool:
        """Whether any pixel is valid in both dates: 16 small probes first (a few blocks of
        each file), then a coarse preview (decodes every block of files without overviews: 27 s
        for a 120 MP pair), then a full scan."""
        g = self.grid
        side = min(32, g.width, g.height)
        rows, cols = (np.linspace(0, n - side, 4).astype(int) for n in (g.height, g.width))
        try:
            if any(self._read_both(Window(int(c), int(r), side, side))[2].any()
                   for r in rows for c in cols):
                return True
        except InputError:
            pass  # an unreadable file: the preview below names the whole grid in its message
        whole = Window(0, 0, g.width, g.height)
        if self._read_both(whole, (min(g.height, preview), min(g.width, preview)))[2].any():
            return True
        return any(self._read_both(w)[2].any() for w in tile_windows(g.width, g.height, 1024, 0))


def _wavelength(band: gdal.Band) -> Optional[float]:
    """A band's centre wavelength in micrometres from its metadata, or None.

    Reads GDAL's IMAGERY domain (``CENTRAL_WAVELENGTH_UM``), ENVI headers (``wavelength``,
    ``wavelength_units``) and the Sentinel-2 driver (``WAVELENGTH``, ``WAVELENGTH_UNIT``).
    """
    value = band.GetMetadataItem("CENTRAL_WAVELENGTH_UM", "IMAGERY")
    if value:
        return band_roles.to_micrometres(value, "um")
    for key, unit in (("wavelength", "wavelength_units"), ("WAVELENGTH", "WAVELENGTH_UNIT")):
        value = band.GetMetadataItem(key)
        if value:
            return band_roles.to_micrometres(value, band.GetMetadataItem(unit) or "")
    return None


def _fe_bands(
    fe_bands: Optional[Sequence[int]],
    rule: str,
    selected: Tuple[Tuple[int, ...], Tuple[int, ...]],
    datasets: Tuple[gdal.Dataset, gdal.Dataset],
    labels: Tuple[str, str],
) -> Tuple[Tuple[int, ...], Tuple[int, ...], str]:
    """Bands of each date fed to the feature extractor, and how they were chosen.

    The user's bands win; otherwise (``rule`` ``"wavelength"``) the composite both dates'
    wavelengths allow (:mod:`.band_roles`), else the first three selected bands (or the first).
    """
    if fe_bands is not None:
        chosen = tuple(_select(ds, fe_bands, label) for ds, label in zip(datasets, labels))
        if len(chosen[0]) not in (1, 3):
            raise InputError(
                f"fe_bands must list 1 or 3 bands (fed to the feature extractor as grey or RGB), "
                f"got {len(chosen[0])}: {chosen[0]}; choose e.g. the red, green and blue bands."
            )
        return chosen[0], chosen[1], "as given"
    if rule == "wavelength":
        found = [
            band_roles.composite([_wavelength(ds.GetRasterBand(b)) for b in sel])
            for ds, sel in zip(datasets, selected)
        ]
        if found[0] and found[1] and found[0][1] == found[1][1]:
            picked = tuple(tuple(sel[i] for i in f[0]) for sel, f in zip(selected, found))
            return picked[0], picked[1], f"{found[0][1]} by wavelength"
    first = tuple(sel[:3] if len(sel) >= 3 else sel[:1] for sel in selected)
    return first[0], first[1], "first bands"


def open_pair(
    before_path: PathLike,
    after_path: PathLike,
    bands_before: Optional[Sequence[int]] = None,
    bands_after: Optional[Sequence[int]] = None,
    fe_bands: Optional[Sequence[int]] = None,
    resampling: str = "bilinear",
    min_size: int = 32,
    check_valid: bool = True,
    fe_band_rule: str = "first",
) -> AlignedPair:
    """Open two rasters and align the after image on the before image's grid.

    The grid is the before image cropped to the intersection of both extents (in the before
    image's CRS). The after image is read directly when its pixels line up with that grid,
    otherwise warped (reprojected/resampled) with ``resampling``. Two rasters without
    georeferencing (PNG, JPEG, ...) of the same size are used as pixel grids.

    Validity combines, for every used band of both dates, the GDAL mask (nodata value,
    internal or external ``.msk`` mask, alpha band), non-finite values, and pixels outside the
    after image.

    Args:
        before_path: Before image.
        after_path: After image.
        bands_before: 1-based bands of the before image (None = all).
        bands_after: 1-based bands of the after image (None = all); same count as before.
        fe_bands: 1 or 3 1-based band numbers of each raw image fed to the feature extractor.
            None = chosen by ``fe_band_rule``.
        resampling: ``nearest``, ``bilinear``, ``cubic`` or ``average`` (for warping only).
        min_size: Smallest accepted width and height of the common grid, in pixels.
        check_valid: Scan for a pixel valid in both dates (a decimated read of the whole
            rasters; False where the same pair was already checked, e.g. on Dask workers).
        fe_band_rule: Without ``fe_bands``: ``"first"``, the first three selected bands, or the
            first selected band (grey, replicated by the consumer) when fewer are selected;
            ``"wavelength"``, the composite the bands' recorded wavelengths allow
            (:mod:`.band_roles`), else as ``"first"``.

    Returns:
        The aligned pair.

    Raises:
        InputError: Missing/unreadable file, bad band selection or data type, no overlap,
            grid smaller than ``min_size``, or no valid pixel in both dates.
    """
    if resampling not in RESAMPLINGS:
        raise InputError(
            f"Unknown resampling {resampling!r}; choose one of {', '.join(RESAMPLINGS)}."
        )
    if fe_band_rule not in band_roles.RULES:
        raise InputError(
            f"Unknown fe_band_rule {fe_band_rule!r}; choose one of {', '.join(band_roles.RULES)}."
        )
    b_ds, a_ds = _open(before_path, "Before"), _open(after_path, "After")
    b_label, a_label = _label("before", before_path), _label("after", after_path)
    sel_b = _select(b_ds, bands_before, b_label)
    sel_a = _select(a_ds, bands_after, a_label)
    if len(sel_b) != len(sel_a):
        raise InputError(
            f"The {b_label} uses {len(sel_b)} band(s) but the {a_label} uses {len(sel_a)}; "
            "select the same number of bands from each date (bands_before / bands_after)."
        )
    fe_b, fe_a, fe_how = _fe_bands(
        fe_bands, fe_band_rule, (sel_b, sel_a), (b_ds, a_ds), (b_label, a_label)
    )
    read_b = sorted(set(sel_b) | set(fe_b))
    read_a = sorted(set(sel_a) | set(fe_a))
    _check_types(b_ds, read_b, b_label)
    _check_types(a_ds, read_a, a_label)

    gt_b, wkt_b = _georef(b_ds)
    gt_a, wkt_a = _georef(a_ds)
    keep: List[object] = [b_ds, a_ds]
    if gt_b is None or gt_a is None:
        if (b_ds.RasterXSize, b_ds.RasterYSize) != (a_ds.RasterXSize, a_ds.RasterYSize):
            raise InputError(
                f"The {b_label} is {b_ds.RasterXSize}x{b_ds.RasterYSize} pixels and the "
                f"{a_label} {a_ds.RasterXSize}x{a_ds.RasterYSize}, and "
                f"{'neither is' if gt_b is None and gt_a is None else 'only one is'} "
                "georeferenced, so they cannot be aligned; georeference both images, or give "
                "two images of the same size."
            )
        if gt_b is not None or gt_a is not None:
            log.warning("Only one image is georeferenced; aligning the two pixel by pixel.")
        gt, wkt = (gt_b, wkt_b) if gt_b is not None else (gt_a, wkt_a)
        grid = Grid(b_ds.RasterXSize, b_ds.RasterYSize, gt or PIXEL_GEOTRANSFORM, wkt)
        before: Source = _DirectSource(b_ds, read_b, 0, 0, b_label)
        after: Source = _DirectSource(a_ds, read_a, 0, 0, a_label)
    else:
        grid, before, after = _align(
            b_ds, a_ds, gt_b, wkt_b, gt_a, wkt_a, read_b, read_a, resampling, b_label, a_label, keep
        )
    if grid.width < min_size or grid.height < min_size:
        raise InputError(
            f"The common area of the two images is only {grid.width}x{grid.height} pixels; at "
            f"least {min_size}x{min_size} are needed. Use larger images (or images that "
            "overlap more)."
        )
    pair = AlignedPair(
        str(before_path), str(after_path), grid, before, after,
        (sel_b, sel_a), (fe_b, fe_a), (read_b, read_a), keep, fe_how,
    )
    if check_valid and not pair.has_valid_pixels():
        pair.close()
        raise InputError(
            "No pixel holds valid data in both images where they overlap (all nodata or "
            "masked); check the nodata values and masks, and that both images cover the same "
            "place."
        )
    log.info(
        "Aligned pair on a %dx%d grid (%d bands); the feature extractor sees %s (%s)",
        grid.width, grid.height, pair.band_count, pair.describe_fe_bands(), fe_how,
    )
    return pair


def _align(
    b_ds, a_ds, gt_b, wkt_b, gt_a, wkt_a, read_b, read_a, resampling, b_label, a_label, keep
) -> Tuple[Grid, Source, Source]:
    """Crop the before grid to the intersection and read/warp the after image onto it."""
    if gt_b[2] != 0 or gt_b[4] != 0 or gt_b[1] <= 0 or gt_b[5] >= 0:
        raise InputError(
            f"The {b_label} is not north-up (rotated or flipped geotransform); warp it to a "
            "north-up grid first (gdalwarp, or Raster > Projections > Warp in QGIS)."
        )
    if bool(wkt_b) != bool(wkt_a):
        log.warning("Only one image has a CRS; assuming the other uses the same CRS.")
    width, height = b_ds.RasterXSize, b_ds.RasterYSize
    own = _bbox_in(_edge_points(gt_b, width, height), wkt_b, wkt_b, b_label)
    other = _bbox_in(_edge_points(gt_a, a_ds.RasterXSize, a_ds.RasterYSize), wkt_a, wkt_b, a_label)
    xmin, ymin = max(own[0], other[0]), max(own[1], other[1])
    xmax, ymax = min(own[2], other[2]), min(own[3], other[3])
    tol = 1e-6
    col0 = max(0, math.floor((xmin - gt_b[0]) / gt_b[1] + tol)) if xmax > xmin else 0
    col1 = min(width, math.ceil((xmax - gt_b[0]) / gt_b[1] - tol)) if xmax > xmin else 0
    row0 = max(0, math.floor((ymax - gt_b[3]) / gt_b[5] + tol)) if ymax > ymin else 0
    row1 = min(height, math.ceil((ymin - gt_b[3]) / gt_b[5] - tol)) if ymax > ymin else 0
    if col1 <= col0 or row1 <= row0:
        raise InputError(
            f"The {b_label} and the {a_label} do not overlap; check that both cover the same "
            "place and that their CRSs are set correctly."
        )
    crop_gt = (gt_b[0] + col0 * gt_b[1], gt_b[1], 0.0, gt_b[3] + row0 * gt_b[5], 0.0, gt_b[5])
    grid = Grid(col1 - col0, row1 - row0, crop_gt, wkt_b or wkt_a)
    before = _DirectSource(b_ds, read_b, col0, row0, b_label)

    offset = _pixel_offset(crop_gt, gt_a, wkt_b, wkt_a, (grid.width, grid.height))
    if offset is not None:
        col, row = offset
        if (
            col >= 0 and row >= 0
            and col + grid.width <= a_ds.RasterXSize and row + grid.height <= a_ds.RasterYSize
        ):
            log.info("The after image lines up with the before grid; reading it directly.")
            return grid, before, _DirectSource(a_ds, read_a, col, row, a_label)

    log.info("Warping the after image onto the before grid (%s).", resampling)
    bounds = grid.bounds()
    srs: Dict[str, str] = {}
    if wkt_b and wkt_a:
        srs = {"dstSRS": wkt_b}
    elif wkt_b or wkt_a:
        srs = {"srcSRS": wkt_b or wkt_a, "dstSRS": wkt_b or wkt_a}
    common = dict(
        format="VRT", outputBounds=bounds, width=grid.width, height=grid.height, **srs
    )
    try:
        subset = gdal.Translate("", a_ds, format="VRT", bandList=list(read_a))
        wide = any(a_ds.GetRasterBand(b).DataType == gdal.GDT_Float64 for b in read_a)
        data = gdal.Warp(  # Float64 kept, so values beyond float32 are reported, not lost
            "", subset, resampleAlg=RESAMPLINGS[resampling],
            outputType=gdal.GDT_Float64 if wide else gdal.GDT_Float32, **common,
        )
        mask_src = _validity_vrt(a_ds, read_a)
        valid = gdal.Warp(
            "", mask_src, resampleAlg="near", outputType=gdal.GDT_Byte,
            warpOptions=["INIT_DEST=0"], srcNodata=None, dstNodata=None, **common,
        )
    except RuntimeError as exc:
        raise InputError(
            f"The {a_label} cannot be warped onto the {b_label}'s grid ({exc}); reproject it "
            "to the before image's CRS first (gdalwarp, or Raster > Projections > Warp)."
        ) from None
    keep.extend([subset, mask_src])
    return grid, before, _WarpedSource(data, valid, [subset, mask_src], read_a, a_label)


def _equivalent_crs(wkt_a: str, wkt_b: str, points: np.ndarray, tolerance: float) -> bool:
    """Same CRS, or one whose transformation moves ``points`` by less than ``tolerance``."""
    if _same_crs(wkt_a, wkt_b):
        return True
    try:
        transform = osr.CoordinateTransformation(_srs(wkt_a), _srs(wkt_b))
        moved = np.array(transform.TransformPoints(points.tolist()), dtype=np.float64)[:, :2]
    except RuntimeError:
        return False
    return bool(np.all(np.abs(moved - points) < tolerance))


def _pixel_offset(
    crop_gt: Sequence[float], gt_a: Sequence[float], wkt_b: str, wkt_a: str, size: Tuple[int, int]
) -> Optional[Tuple[int, int]]:
    """Integer pixel offset of the grid in the after image, when their pixels line up."""
    if gt_a[2] != 0 or gt_a[4] != 0:
        return None
    points = _edge_points(crop_gt, *size)
    if not _equivalent_crs(wkt_b, wkt_a, points, 1e-3 * abs(crop_gt[1])):
        return None
    if not (math.isclose(gt_a[1], crop_gt[1], rel_tol=1e-9)
            and math.isclose(gt_a[5], crop_gt[5], rel_tol=1e-9)):
        return None
    col = (crop_gt[0] - gt_a[0]) / gt_a[1]
    row = (crop_gt[3] - gt_a[3]) / gt_a[5]
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(col)), int(round(row))


# --------------------------------------------------------------------------- outputs


_FULL_DISK_WORDS = ("no space", "disk full", "disk is full", "quota")
_NEARLY_FULL = 1 << 20  # bytes free under which a failed write is blamed on a full disk


def _disk_full(folder: Path, exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(word in str(exc).lower() for word in _FULL_DISK_WORDS):
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def write_error(path: PathLike, exc: BaseException) -> InputError:
    """The one-line error for a failed write of ``path`` (a full disk named as such)."""
    target = Path(str(path)).expanduser().resolve()
    folder = target.parent
    if _disk_full(folder, exc):
        return InputError(
            f"The disk holding '{folder}' is full (writing '{target.name}'); free some space "
            "there or choose an output folder on another disk."
        )
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return InputError(
        f"Writing '{target}' failed ({reason}); check that '{folder}' is writable and has "
        "free space, or choose another output folder."
    )


@contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn a GDAL, OGR or OS error raised while writing ``path`` into :func:`write_error`."""
    try:
        yield
    except (RuntimeError, OSError) as exc:
        raise write_error(path, exc) from None


def _writable(folder: Path) -> bool:
    if not os.access(folder, os.W_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return True
    except OSError:
        return False


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise InputError(
            f"The output folder '{folder}' does not exist; create it or choose another folder."
        )
    if not _writable(folder):
        raise InputError(
            f"The output folder '{folder}' is not writable; choose a folder you can write to."
        )


def check_suffix(path: Optional[PathLike], what: str, suffixes: Tuple[str, ...]) -> None:
    """InputError unless ``path`` (when given) ends with one of ``suffixes`` (any case)."""
    if path and Path(str(path)).suffix.lower() not in suffixes:
        raise InputError(
            f"{what} '{path}' must be a {_FORMATS.get(suffixes, 'file')} file ending in "
            f"{' or '.join(suffixes)}; change its extension to {suffixes[0]}."
        )


def output_files(path: PathLike) -> List[Path]:
    """The files writing the output ``path`` creates or replaces.

    The file itself, GDAL's side files of an older output there (``.aux.xml``, ``.ovr``), the
    style ``<stem>.qml`` and, for a GeoPackage, its journal files.
    """
    target = Path(str(path)).expanduser().resolve()
    files = [target, Path(f"{target}.aux.xml"), Path(f"{target}.ovr"), target.with_suffix(".qml")]
    if target.suffix.lower() == ".gpkg":
        files += [Path(f"{target}{s}") for s in ("-journal", "-wal", "-shm")]
    return list(dict.fromkeys(files))


def _identity(path: Path) -> Optional[Tuple[int, int]]:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_output_path(path: PathLike, inputs: Sequence[Optional[PathLike]]) -> None:
    """Raise :class:`InputError` if ``path`` cannot be used for an output.

    No file the output writes (:func:`output_files`) may be a file one of ``inputs`` consists
    of (:func:`input_files`: the dataset, a VRT's sources, masks and other side files, its
    style), compared after resolving links and ``..`` and by identity (hard links); none may
    exist as anything but a regular file; the folder must exist and be writable.
    """
    if not str(path):
        raise InputError("No output path was given; choose an output file.")
    target = Path(str(path)).expanduser().resolve()
    if target.is_dir():
        raise InputError(f"The output '{target}' is a folder; give a file name inside it.")
    written = output_files(target)
    for item in written:
        kind = special_kind(item) or ("a folder" if item.is_dir() else None)
        if kind:
            raise InputError(
                f"The output '{target}' would replace '{item}', which exists and is {kind}, "
                "not a regular file; choose another output file name."
            )
    owners: Dict[object, Tuple[Path, str]] = {}
    for source in inputs:
        for item in input_files(source) if source else ():
            owners.setdefault(item, (item, str(source)))
            owners.setdefault(_identity(item), (item, str(source)))
    for item in written:
        hit = owners.get(item) or owners.get(_identity(item) or item)
        if hit is None:
            continue
        part, source = hit
        if item == target and part == Path(source).expanduser().resolve():
            raise InputError(
                f"The output '{target.name}' is also an input; choose another output file name "
                "so the input is not overwritten."
            )
        raise InputError(
            f"The output '{target.name}' would overwrite '{part}', a file of the input "
            f"'{Path(source).name}'; choose another output file name so the input is not "
            "overwritten."
        )
    _check_folder(target.parent)


def publish(tmp: PathLike, path: PathLike) -> None:
    """Rename a finished temporary file onto ``path`` with the usual permissions.

    ``mkstemp`` creates files readable by their owner only; give the output the mode a
    normally created file would have (0666 minus the umask).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def copy_style(style: Optional[str], path: PathLike) -> Optional[Path]:
    """Copy ``resources/styles/<style>.qml`` beside ``path`` as ``<stem>.qml``."""
    if not style:
        return None
    source = STYLES_DIR / f"{style}.qml"
    target = Path(str(path)).with_suffix(".qml")
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        log.warning("Could not write the style %s: %s", target, exc)
        return None
    return target


def _overview_levels(width: int, height: int, smallest: int = 32) -> List[int]:
    levels, level = [], 2
    while max(width, height) / level >= smallest:
        levels.append(level)
        level *= 2
    return levels


class AtomicRasterWriter:
    """Write a one-band GeoTIFF through a temporary file, renamed on :meth:`commit`.

    The file is tiled (256), DEFLATE-compressed (PREDICTOR=3 and level 1 for floats, 2 for integers),
    BIGTIFF=IF_SAFER. On :meth:`commit` overviews are built, the file is renamed onto
    ``path`` (replacing an older output) and the QGIS style is copied beside it as
    ``<stem>.qml``. Leaving the ``with`` block without commit (or with an exception) removes
    the temporary file.

    Args:
        path: Final output path.
        grid: Output grid (CRS and geotransform are not written for pixel grids).
        dtype: One of uint8, uint16, int16, uint32, int32, float32, float64.
        nodata: Nodata value (NaN written with :meth:`write` becomes this), or None.
        description: Band description.
        metadata: Dataset metadata items.
        style: Name of a style in ``resources/styles`` (without ``.qml``) or None.
    """

    def __init__(
        self,
        path: PathLike,
        grid: Grid,
        dtype: str = "float32",
        nodata: Optional[float] = -9999.0,
        description: str = "",
        metadata: Optional[Dict[str, str]] = None,
        style: Optional[str] = "probability",
    ) -> None:
        if dtype not in DTYPES:
            raise InputError(f"Unknown output dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
        self.dtype = np.dtype(dtype)
        is_float = self.dtype.kind == "f"
        if nodata is not None and not is_float:
            info = np.iinfo(self.dtype)
            if nodata != int(nodata) or not info.min <= nodata <= info.max:
                raise InputError(
                    f"nodata {nodata} does not fit the {dtype} output; choose a whole number "
                    f"between {info.min} and {info.max}."
                )
        if style and not (STYLES_DIR / f"{style}.qml").is_file():
            raise InputError(f"Unknown style {style!r}; no {style}.qml in {STYLES_DIR}.")
        self.path = Path(str(path)).expanduser().resolve()
        _check_folder(self.path.parent)
        self.grid, self.nodata, self.style = grid, nodata, style
        self.committed = False
        self._ds = None
        with writing(self.path):
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.stem}.", suffix=".tmp.tif", dir=self.path.parent
            )
        os.close(fd)
        self.tmp_path = Path(tmp)
        try:
            with writing(self.path):
                self._create(description, metadata)
        except BaseException:
            self.abort()
            raise

    def _create(self, description: str, metadata: Optional[Dict[str, str]]) -> None:
        """Create the temporary GeoTIFF with the grid, nodata, description and metadata."""
        grid, is_float = self.grid, self.dtype.kind == "f"
        # Floats at DEFLATE level 1: measured 30-40 % less time than the default level 6 for
        # 0.7 % more bytes (16 MP of scores); blocks are compressed on all cores meanwhile.
        options = [
            "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
            f"PREDICTOR={3 if is_float else 2}", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS",
            *(["ZLEVEL=1"] if is_float else []),
        ]
        driver = gdal.GetDriverByName("GTiff")
        self._ds = driver.Create(
            str(self.tmp_path), grid.width, grid.height, 1, DTYPES[self.dtype.name],
            options=options,
        )
        if grid.georeferenced:
            self._ds.SetGeoTransform(tuple(grid.geotransform))
            if grid.projection:
                self._ds.SetProjection(grid.projection)
        band = self._ds.GetRasterBand(1)
        if self.nodata is not None:
            band.SetNoDataValue(float(self.nodata))
        if description:
            band.SetDescription(description)
        if metadata:
            self.set_metadata(metadata)

    def __enter__(self) -> AtomicRasterWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            if not self.committed:
                self.abort()
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    @property
    def band(self) -> gdal.Band:
        """The GDAL band of the temporary file (for in-place processing such as sieving)."""
        if self._ds is None:
            raise InputError("The writer is closed; create a new AtomicRasterWriter.")
        return self._ds.GetRasterBand(1)

    def write(self, array: np.ndarray, window: Window) -> None:
        """Write a 2-D block at ``window`` (NaN/inf become nodata)."""
        band = self.band
        values = np.asarray(array)
        if values.shape != (window.height, window.width):
            raise InputError(
                f"Block of shape {values.shape} does not match the window at {span(window)}; "
                "pass one value per "
                "window pixel."
            )
        if (
            window.col_off < 0 or window.row_off < 0
            or window.col_off + window.width > self.grid.width
            or window.row_off + window.height > self.grid.height
        ):
            raise InputError(
                f"The window at {span(window)} leaves the {self.grid.width}x{self.grid.height} "
                "output."
            )
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                fill = self.nodata if self.nodata is not None else 0
                values = np.where(bad, fill, values)
        with writing(self.path), timing.stage("write"):
            band.WriteArray(values.astype(self.dtype, copy=False), window.col_off, window.row_off)

    def set_metadata(self, metadata: Dict[str, str]) -> None:
        """Add dataset metadata items (keys and values are converted to strings)."""
        if self._ds is None:
            raise InputError("The writer is closed; create a new AtomicRasterWriter.")
        for key, value in metadata.items():
            self._ds.SetMetadataItem(str(key), str(value))

    def commit(self) -> Path:
        """Build overviews, close, rename onto ``path`` and write the style; return ``path``."""
        if self._ds is None:
            raise InputError("The writer was already committed or aborted; nothing to commit.")
        try:
            with writing(self.path), timing.stage("write"):
                self._finish()
        except BaseException:
            self.abort()
            raise
        self.committed = True
        self._remove_sidecars(self.tmp_path)
        copy_style(self.style, self.path)
        log.info("Wrote %s", self.path)
        return self.path

    def _finish(self) -> None:
        """Build overviews, close the temporary file and rename it onto ``path``."""
        levels = _overview_levels(self.grid.width, self.grid.height)
        if levels:
            # Built on the file reopened without NUM_THREADS: GDAL can deadlock building
            # overviews of a dataset that compresses on several threads (seen here: a 120 MP
            # map waited in BuildOverviews for ever; rasterio's tests hit the same).
            self._ds.FlushCache()
            self._ds = None
            self._ds = gdal.OpenEx(str(self.tmp_path), gdal.OF_RASTER | gdal.OF_UPDATE)
            method = "AVERAGE" if self.dtype.kind == "f" else "NEAREST"
            # At the map's own DEFLATE level 1 (the reopened file would use level 6).
            gdal.SetThreadLocalConfigOption("ZLEVEL_OVERVIEW", "1")
            try:
                self._ds.BuildOverviews(method, levels)
            finally:
                gdal.SetThreadLocalConfigOption("ZLEVEL_OVERVIEW", None)
        self._ds.FlushCache()
        self._ds = None
        for side in (f"{self.path}.aux.xml", f"{self.path}.ovr"):  # of an older output
            if os.path.exists(side):
                os.remove(side)
        publish(self.tmp_path, self.path)

    def _close_quietly(self) -> None:
        """Close the dataset, ignoring what its final flush cannot write: the file is being
        discarded (e.g. a mask written beside a score when the disk filled up)."""
        ds, self._ds = getattr(self, "_ds", None), None
        if ds is None:
            return
        hook = sys.unraisablehook  # GDAL raises such errors from the dataset's destructor
        sys.unraisablehook = lambda _info: None
        gdal.PushErrorHandler("CPLQuietErrorHandler")
        try:
            del ds
        finally:
            gdal.PopErrorHandler()
            sys.unraisablehook = hook

    @staticmethod
    def _remove_sidecars(path: Path) -> None:
        for side in (Path(f"{path}.aux.xml"), Path(f"{path}.ovr")):
            if side.exists():
                side.unlink()

    def abort(self) -> None:
        """Discard the temporary file (idempotent)."""
        self._close_quietly()
        tmp = getattr(self, "tmp_path", None)
        if tmp is not None and not self.committed:
            if tmp.exists():
                tmp.unlink()
            self._remove_sidecars(tmp)
