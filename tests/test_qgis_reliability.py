"""Issue 19 in QGIS: the algorithm's own one-line messages, and no input ever overwritten."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

pytestmark = pytest.mark.qgis
ALG = "metriccd:metricchangedetection"


def run(params):
    import processing

    return processing.run(ALG, params, feedback=QgsProcessingFeedback())


def test_existing_file_that_is_not_a_raster_is_named_so(provider, fast_params, tmp_path):
    notes = tmp_path / "notes.tif"
    notes.write_text("field notes, not a raster")
    for key in ("BEFORE", "AFTER"):
        with pytest.raises(QgsProcessingException, match=f"{key.capitalize()} image 'notes.tif' "
                           "cannot be read as a raster"):
            run({**fast_params, key: str(notes), "OUTPUT": str(tmp_path / "p.tif")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tif"]


@pytest.mark.parametrize("key, value", [("ITERATIONS", 2.7), ("SEED", "1.5"), ("TILE_SIZE", 100.2)])
def test_fraction_for_a_whole_number_is_refused(provider, fast_params, tmp_path, key, value):
    alg = provider.algorithm("metricchangedetection")
    params = {**fast_params, key: value, "OUTPUT": str(tmp_path / "p.tif")}
    ok, message = alg.checkParameterValues(params, QgsProcessingContext())
    assert not ok and message.startswith(f"{key} must be a whole number, got {value!r}")
    with pytest.raises(QgsProcessingException, match=f"{key} must be a whole number"):
        run(params)
    ok, _ = alg.checkParameterValues({**params, key: 3 if key != "TILE_SIZE" else 128},
                                     QgsProcessingContext())
    assert ok


def test_output_onto_a_source_of_a_vrt_input_is_refused(provider, fast_params, tmp_path):
    source = tmp_path / "source.tif"
    gdal.Translate(str(source), fast_params["BEFORE"]).FlushCache()
    vrt = tmp_path / "before.vrt"
    gdal.BuildVRT(str(vrt), [str(source)]).FlushCache()
    content = source.read_bytes()
    with pytest.raises(QgsProcessingException, match="would overwrite .*source.tif"):
        run({**fast_params, "BEFORE": str(vrt), "OUTPUT": str(source)})
    assert source.read_bytes() == content
    assert np.array_equal(gdal.Open(str(vrt)).ReadAsArray(), gdal.Open(str(source)).ReadAsArray())
