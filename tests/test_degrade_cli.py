"""degrade: preview pictures and ``supirkit degrade preview`` (image files and .tar shards)."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from degrade_fixtures import photo
from PIL import Image

from supirkit.cli import main
from supirkit.degrade import Degrader
from supirkit.inspection.degrade_views import contact_sheet, describe, fit_crop, inspect_views, pair_rows, render_pairs


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_describe_names_the_key_parameters():
    d = Degrader.from_profile("supir")
    p = d.sample_params(seed=0, key="x")
    lines = describe(p)
    assert len(lines) == 7
    assert lines[0].startswith("b1 ") and str(p["first"]["blur"]["size"]) in lines[0]
    assert f"q{p['first']['jpeg']['quality_int']}" in lines[2]
    assert lines[-1].startswith("f ")
    cf = Degrader.from_profile("diffbir_codeformer").sample_params(key="y")
    assert describe(cf)[1].startswith("down /")


def test_contact_sheet_and_pair_rows(tmp_path):
    d = Degrader.from_profile("supir", ["hq_size=64", "output.size=64"])
    sheet = contact_sheet(d, photo(0, 64, 64), n=3, tile=96, path=tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sheet.width > 4 * 96 and sheet.height > 96  # target + 3 variants in one row, text below
    arr = np.asarray(sheet)
    assert arr.std() > 5
    rows = pair_rows(d, [photo(1, 64, 64), photo(2, 64, 64)], keys=["a", "b"], tile=80, path=tmp_path / "p.png")
    assert rows.width > 2 * 80 and rows.height > 2 * 80 and (tmp_path / "p.png").exists()
    with pytest.raises(ValueError):
        pair_rows(d, [photo(1, 64, 64)], keys=["a", "b"])


def test_fit_crop_centre_crops_and_enlarges():
    img = photo(10, 60, 100)
    out = fit_crop(img, 48)
    assert out.shape == (48, 48, 3)
    np.testing.assert_array_equal(out, img[6:54, 26:74])
    up = fit_crop(img, 90)  # short side 60 < 90: enlarged to 90x150 first
    assert up.shape == (90, 90, 3)
    assert fit_crop(img, None) is img
    with pytest.raises(ValueError, match="uint8"):
        fit_crop(img.astype(np.float32), 48)


def test_render_pairs_returns_a_grid_array_of_target_lq_rows(tmp_path):
    images = [photo(11, 80, 120), photo(12, 64, 64), photo(13, 50, 70)]
    grid = render_pairs(images, "supir", seed=3, tile=64, overrides=["hq_size=64", "output.size=64"],
                        path=tmp_path / "pairs.png")
    assert isinstance(grid, np.ndarray) and grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] > 2 * 64 and grid.shape[0] > 3 * 64  # 2 columns (target | LQ), 3 rows
    with Image.open(tmp_path / "pairs.png") as im:
        assert im.size == (grid.shape[1], grid.shape[0])
    again = render_pairs(images, Degrader.from_profile("supir", ["hq_size=64", "output.size=64"]), seed=3, tile=64)
    np.testing.assert_array_equal(grid, again)  # same profile, seed and keys: same picture
    other = render_pairs(images, "supir", seed=4, tile=64, overrides=["hq_size=64", "output.size=64"])
    assert not np.array_equal(grid, other)


def test_inspect_views_follow_the_view_hook_contract():
    views = inspect_views("supir", seed=1, overrides=["hq_size=64", "output.size=64"])
    img = photo(14, 90, 70)
    out = views(img, {"key": "000123"})
    assert len(out) == 1
    label, lq = out[0]
    assert label.startswith("LQ 16x16->64x64 q") and lq.shape == (64, 64, 3) and lq.dtype == np.uint8
    d = Degrader.from_profile("supir", ["hq_size=64", "output.size=64"])
    np.testing.assert_array_equal(lq, d(fit_crop(img, 64), seed=1, key="000123")[1])
    sharp = inspect_views("diffbir_realesrgan", n=2, overrides=["hq_size=64"])(img, {})
    assert [lab.split(" ")[0] for lab, _ in sharp] == ["target", "LQ", "LQ"]
    assert not np.array_equal(sharp[1][1], sharp[2][1])
    from supirkit.inspection import Sample, make_tiles

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    tiles = make_tiles([Sample("000123", "x.tar", {"key": "000123"}, None, buf.getvalue(), "png")], 64,
                       views=views)
    assert len(tiles[0].images) == 2 and tiles[0].images[1][0].startswith("LQ ")


def test_cli_preview_from_an_image_centre_crops(tmp_path, capsys):
    src = tmp_path / "big.png"
    src.write_bytes(_png_bytes(photo(3, 90, 120)))
    out = tmp_path / "grid.png"
    rc = main(["degrade", "preview", str(src), "--out", str(out), "--n", "2", "--seed", "1", "--tile", "64",
               "--set", "hq_size=72", "--set", "output.size=72"])
    assert rc == 0 and out.exists()
    assert "2 variants of big (72x72)" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.width >= 3 * 64


def test_cli_preview_from_a_shard_uses_the_first_image(tmp_path, capsys):
    shard = _tar(tmp_path / "shard-000000.tar", [
        ("000001.json", json.dumps({"w": 80}).encode()),
        ("000001.png", _png_bytes(photo(4, 80, 80))),
        ("000002.png", _png_bytes(photo(5, 80, 80))),
    ])
    out = tmp_path / "grid.png"
    assert main(["degrade", "preview", str(shard), "--out", str(out), "--n", "1", "--tile", "48",
                 "--config", "degrade/realesrgan_x4.yaml", "--set", "hq_size=64"]) == 0
    assert "variants of 000001 " in capsys.readouterr().out and out.exists()


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_cli_preview_refuses_unsafe_shard_members(tmp_path, capsys, name):
    shard = _tar(tmp_path / "bad.tar", [(name, _png_bytes(photo(6, 64, 64)))])
    assert main(["degrade", "preview", str(shard), "--out", str(tmp_path / "g.png"), "--n", "1"]) == 2
    assert "refusing member" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["degrade", "preview", str(tmp_path / "missing.png"), "--out", str(tmp_path / "g.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    src = tmp_path / "x.png"
    src.write_bytes(_png_bytes(photo(7, 64, 64)))
    assert main(["degrade", "preview", str(src), "--out", str(tmp_path / "g.png"),
                 "--set", "realesrgan.first.noise.gray_prob=2"]) == 2
    err = capsys.readouterr().err
    assert "realesrgan.first.noise.gray_prob" in err and err.count("\n") == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["degrade", "preview", str(bad), "--out", str(tmp_path / "g.png")]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert main(["degrade"]) == 2


def test_demo_step_writes_both_pictures(tmp_path):
    from supirkit.demo import DemoContext, available_steps
    from supirkit.demo import degrade as demo_degrade
    from supirkit.demo.samples import make_sample_folder

    assert "degrade" in available_steps()
    ctx = DemoContext(out=tmp_path, samples=tmp_path / "samples")
    make_sample_folder(ctx.samples, size=96)
    result = demo_degrade.step(ctx)
    assert result["source"].endswith("photo_00.jpg")  # a good photo, not one of the broken files
    for key in ("contact_sheet", "pairs"):
        with Image.open(result[key]) as im:
            assert im.width > 2 * 192 and im.height > 192
