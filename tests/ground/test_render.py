"""ground.render's colour scales: the heads on one scale by default, each map on its own with
per-map; read back from the rendered pixels."""

import numpy as np
import pytest
from PIL import Image

from evaluation.report import colorize
from ground import render
from ground.result import Grounding

SIZE = (64, 32)  # (W, H) of the picture and of the maps, so no resizing blurs the columns


def grounding(sound: np.ndarray, speech: np.ndarray, total: np.ndarray) -> Grounding:
    maps = {"sound": sound, "speech": speech, "total": total}
    return Grounding(
        heads=["sound", "speech", "total"],
        maps={k: v[None] for k, v in maps.items()},
        mean_maps=maps,
        activation={k: np.zeros(1, np.float32) for k in maps},
        times=np.array([0.5]),
        image=Image.new("RGB", SIZE, "black"),
        audio=np.zeros(16_000, np.float32),
        description={},
    )


def colours(panel: Image.Image) -> np.ndarray:
    """The map's pixels of an overlay panel (below the title, left of the colour bar), as RGB."""
    return np.asarray(panel)[render.CAPTION : render.CAPTION + SIZE[1], : SIZE[0]].astype(int)


ROW = SIZE[1] - 4  # a row far from the first row, where the ramps' peaks are circled


@pytest.fixture
def half():
    """The speech map is half the sound map: values 0..1 left to right, and 0..0.5."""
    sound = np.tile(np.linspace(0, 1, SIZE[0], dtype=np.float32), (SIZE[1], 1))
    return grounding(sound, sound / 2, np.maximum(sound, sound / 2) + 3)


def test_the_shared_scale_draws_half_the_values_with_the_colours_of_half_the_values(half):
    sound, speech, total = (colours(p) for p in render.overlays(half, "shared"))
    # over a black picture a pixel is colorize(value) at ALPHA; the speech map's column j holds the
    # value the sound map holds at about column j/2, so it has that column's colour, not column j's
    expected = np.round(render.ALPHA * colorize(np.linspace(0, 0.5, SIZE[0])[None, :])[0]).astype(int)
    assert np.abs(speech[ROW] - expected).max() <= 2
    assert np.abs(speech[ROW, -1] - sound[ROW, SIZE[0] // 2]).max() <= 6  # 0.5 on both (columns 31.5 vs 32)
    assert np.abs(speech[ROW, -1] - sound[ROW, -1]).max() > 40  # the speech map's top is not the scale's top
    # the total has its own min..max (3..4): its ends are the colour map's ends
    assert np.abs(total[ROW, 0] - sound[ROW, 0]).max() <= 1 and np.abs(total[ROW, -1] - sound[ROW, -1]).max() <= 1
    ranges = render.colour_ranges(half.mean_maps, "shared")
    assert ranges["sound"] == ranges["speech"] == (0.0, 1.0) and ranges["total"] == (3.0, 4.0)


def test_per_map_stretches_each_map_to_the_whole_colour_map(half):
    sound, speech, _ = (colours(p) for p in render.overlays(half, "per-map"))
    assert np.abs(speech - sound).max() <= 1  # half the values, the same picture: what the shared scale avoids
    assert render.colour_ranges(half.mean_maps, "per-map")["speech"] == (0.0, 0.5)
    with pytest.raises(ValueError, match="shared, per-map"):
        render.colour_ranges(half.mean_maps, "log")


def test_pixels_the_model_did_not_see_stay_out_of_the_shared_range():
    sound = np.full((SIZE[1], SIZE[0]), np.nan, np.float32)
    sound[:, 16:48] = np.linspace(0.2, 0.6, 32)
    everywhere_nan = np.full_like(sound, np.nan)
    ranges = render.colour_ranges({"sound": sound, "speech": everywhere_nan, "total": sound}, "shared")
    assert ranges["sound"] == ranges["speech"] == pytest.approx((0.2, 0.6))
    assert render.scale_label("speech", ["sound", "speech", "total"], "shared") == "speech: scale shared by the heads"
    assert render.scale_label("total", ["sound", "speech", "total"], "shared") == "total: own scale"


def test_each_overlay_circles_its_own_peak():
    yy, xx = np.mgrid[: SIZE[1], : SIZE[0]]
    sound = np.exp(-((xx - 12) ** 2 + (yy - 10) ** 2) / 20).astype(np.float32)
    speech = 0.1 * np.exp(-((xx - 50) ** 2 + (yy - 20) ** 2) / 20).astype(np.float32)  # dim on the shared scale
    for panel, (px, py) in zip(
        render.overlays(grounding(sound, speech, np.maximum(sound, speech))), [(12, 10), (50, 20)]
    ):
        white = np.argwhere((colours(panel) == 255).all(-1))  # only the ring is white over a black picture
        assert len(white) > 10
        distance = np.hypot(white[:, 1] + 0.5 - (px + 0.5), white[:, 0] + 0.5 - (py + 0.5))
        assert distance.max() <= 5, distance.max()
