"""Image folders (one sub-folder per class) against the pixels the test wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vulnscope.cli import main
from vulnscope.data import load_data, load_digits, load_image_folder
from vulnscope.errors import DataError, MissingFileError


def _write(path, array, mode=None):  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _pixels(seed, shape):  # type: ignore[no-untyped-def]
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_grey_images_load_exactly_with_labels_from_sorted_folder_names(tmp_path) -> None:
    written = {
        ("zebra", "a.png"): _pixels(0, (5, 7)),
        ("ant", "b.png"): _pixels(1, (5, 7)),
        ("ant", "a.PNG"): _pixels(2, (5, 7)),
    }
    for (label, name), array in written.items():
        _write(tmp_path / label / name, array)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / ".cache").mkdir()
    data = load_image_folder(tmp_path)
    assert data.class_names == ("ant", "zebra") and data.num_classes == 2
    assert data.x.shape == (3, 1, 5, 7) and data.x.dtype.is_floating_point
    assert data.y.tolist() == [0, 0, 1]  # ant/a.PNG, ant/b.png, zebra/a.png
    expected = [written[("ant", "a.PNG")], written[("ant", "b.png")], written[("zebra", "a.png")]]
    for image, array in zip(data.x, expected, strict=True):
        np.testing.assert_array_equal(image[0].numpy(), array.astype(np.float32) / 255)
    assert data.take(2).class_names == ("ant", "zebra")


def test_rgb_and_mixed_modes(tmp_path) -> None:
    colour, grey = _pixels(3, (4, 4, 3)), _pixels(4, (4, 4))
    _write(tmp_path / "a" / "colour.png", colour)
    _write(tmp_path / "b" / "grey.png", grey)
    data = load_image_folder(tmp_path)  # mixed: RGB, grey replicated in 3 channels
    assert data.x.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(data.x[0].permute(1, 2, 0).numpy(), colour / np.float32(255))
    for channel in range(3):
        np.testing.assert_array_equal(data.x[1, channel].numpy(), grey / np.float32(255))
    assert load_image_folder(tmp_path, mode="L").x.shape == (2, 1, 4, 4)


def test_sizes_must_match_unless_a_size_is_given(tmp_path) -> None:
    _write(tmp_path / "a" / "small.png", _pixels(5, (4, 4)))
    _write(tmp_path / "b" / "large.png", _pixels(6, (6, 8)))
    with pytest.raises(DataError, match=r"large\.png: is 8x6 pixels but .*small\.png is 4x4"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(3, 5)).x.shape == (2, 1, 3, 5)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda root: None, MissingFileError, "does not exist"),
        (lambda root: root.mkdir(), DataError, "no class sub-folders"),
        (lambda root: (root / "a").mkdir(parents=True), DataError, "hold no images"),
        (lambda root: _corrupt(root), DataError, r"broken\.png: is not a readable image"),
    ],
)
def test_bad_folders_get_one_clear_error(tmp_path, make, error, match) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    make(root)
    with pytest.raises(error, match=match):
        load_image_folder(root)


def _corrupt(root):  # type: ignore[no-untyped-def]
    (root / "a").mkdir(parents=True)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG but not really")


def test_bad_options_are_refused(tmp_path) -> None:
    _write(tmp_path / "a" / "x.png", _pixels(7, (4, 4)))
    with pytest.raises(DataError, match="mode"):
        load_image_folder(tmp_path, mode="CMYK")
    with pytest.raises(DataError, match="size"):
        load_image_folder(tmp_path, size=(0, 4))


def test_load_data_and_the_audit_read_a_folder(tmp_path, digits_cnn) -> None:  # type: ignore[no-untyped-def]
    test = load_digits("test")
    root = tmp_path / "digits"
    for index in range(20):
        pixels = np.round(test.x[index, 0].numpy() * 255).astype(np.uint8)
        _write(root / f"{int(test.y[index])}" / f"{index:03d}.png", pixels)
    data = load_data(str(root))
    assert data.x.shape == (20, 1, 8, 8) and data.source == f"folder:{root}"
    out = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                "--data",
                str(root),
                "--attacks",
                "fgsm",
                "--stages",
                "linf",
                "--linf-eps",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "results.json").read_text())
    assert record["data"]["samples"] == 20 and record["clean_accuracy"] > 0.8
