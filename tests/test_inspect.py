"""``supirkit inspect`` on supirkit shard sets, img2dataset folders, brace patterns and manifests:
summary numbers, --show, --grid and --html."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from datapipe_fixtures import LOCAL, jpeg_bytes, make_images, read_set, run_shard, write_img2dataset_folder


def inspect(argv: list[str], capsys) -> tuple[int, str]:
    from supirkit.cli import main

    code = main(["inspect", *argv])
    return code, capsys.readouterr().out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    truth = write_img2dataset_folder(root / "i2d", n_per_shard=3, shards=2)
    make_images(root / "files", 4)
    out = root / "out"
    assert run_shard([str(root / "files"), str(root / "i2d"), "--out", str(out), "--set",
                      "sharding.samples_per_shard=2", *LOCAL]) == 0
    return root, out, truth


def test_summary_of_a_supirkit_shard_set(sets, capsys):
    _, out, truth = sets
    code, text = inspect([str(out), "--json"], capsys)
    assert code == 0
    s = json.loads(text)
    samples = read_set(out)
    assert s["layout"] == "supirkit" and s["samples"] == len(samples) == 4 + len(truth)
    assert s["bytes"] == sum(p.stat().st_size for p in out.glob("shard-*.tar"))
    assert s["fields"]["json"] == s["samples"] and s["fields"]["jpg"] == s["samples"] and s["fields"]["txt"] == 6
    assert s["captioned"] == 6 and s["caption_coverage"] == pytest.approx(6 / 10)
    assert sum(s["resolution_short_side"].values()) == s["samples"]
    widths = [m["orig_width"] for _, m in samples.values()]
    col = s["columns"]["orig_width"]
    assert (col["min"], col["max"], col["count"]) == (min(widths), max(widths), len(widths))
    assert col["mean"] == pytest.approx(sum(widths) / len(widths))
    assert s["columns"]["upstream.similarity"]["count"] == 6  # img2dataset metadata carried along
    code, text = inspect([str(out)], capsys)
    assert "caption coverage: 60.0% (6 of 10)" in text and "resolution (short side, px)" in text
    # a brace pattern addresses part of the set
    code, text = inspect([str(out / "shard-{000000..000001}.tar"), "--json"], capsys)
    assert json.loads(text)["units"] == 2


def test_img2dataset_folder_is_understood(sets, capsys):
    root, _, truth = sets
    code, text = inspect([str(root / "i2d"), "--json"], capsys)
    s = json.loads(text)
    assert s["layout"] == "img2dataset" and s["samples"] == len(truth)  # failed-download rows left out
    assert s["caption_coverage"] == 1.0 and s["rejected"] == {"404": 2}
    assert s["columns"]["similarity"]["mean"] == pytest.approx(0.26)
    assert s["columns"]["status"]["top"] == [["success", 6]]
    code, text = inspect([str(root / "i2d"), "--no-summary", "--show", "2"], capsys)
    shown = re.findall(r"^== (\S+)", text, re.M)
    assert shown == sorted(truth)[:2]
    for key in shown:
        assert f"caption: {truth[key][1]}" in text


def test_grid_and_html_show_images_keys_captions_and_scores(sets, tmp_path, capsys):
    from PIL import Image

    root, out, _ = sets
    grid, page = tmp_path / "grid.png", tmp_path / "page.html"
    code, text = inspect([str(root / "i2d"), "--grid", str(grid), "--html", str(page), "--n", "5",
                          "--set", "grid.thumb=64", "--set", "grid.columns=5"], capsys)
    assert code == 0 and "contact sheet of 5 samples" in text
    img = Image.open(grid)
    assert img.size[0] == 5 * (64 + 12) and img.size[1] > 64
    pixels = img.convert("L").load()
    text_rows = [y for y in range(66, img.size[1]) if any(pixels[x, y] < 128 for x in range(6, 70))]
    assert text_rows  # key/caption/scores lines drawn under the first image
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 5 and "http://" not in html.replace("http://example.com", "")
    assert "a photo number 0 of shard 0" in html and "similarity=0.25" in html


def test_random_choice_is_reproducible_and_spans_the_set(sets, capsys):
    _, out, _ = sets
    first = re.findall(r"^== (\S+)", inspect([str(out), "--no-summary", "--show", "4", "--seed", "3"], capsys)[1], re.M)
    again = re.findall(r"^== (\S+)", inspect([str(out), "--no-summary", "--show", "4", "--seed", "3"], capsys)[1], re.M)
    assert first == again and len(first) == 4 and len(set(first)) == 4
    choices = {tuple(re.findall(r"^== (\S+)", inspect([str(out), "--no-summary", "--show", "4", "--seed", str(s)],
                                                      capsys)[1], re.M)) for s in range(4)}
    assert len(choices) > 1  # 4 seeds, 210 possible choices: equal choices would mean no randomness


def test_manifest_summary_and_pictures_reread_sources(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "a.jpg"
    good.write_bytes(jpeg_bytes(3, 40, 60))
    evil = "<script>alert(1)</script>"
    pq.write_table(pa.table({"source": [str(good), str(tmp_path / "missing.jpg")], "width": [60, 3000],
                             "height": [40, 2000], "caption": [evil, None], "musiq": [61.5, 40.0]}),
                   tmp_path / "scores.parquet")
    page = tmp_path / "m.html"
    code, text = inspect([str(tmp_path / "scores.parquet"), "--json", "--html", str(page)], capsys)
    s = json.loads(text.split("\ninspect:")[0])
    assert s["kind"] == "manifest" and s["samples"] == 2 and s["caption_coverage"] == 0.5
    assert s["resolution_short_side"] == {"0-255": 1, "1024-2047": 1}
    html = page.read_text()
    # a missing source: shown, not fatal
    assert html.count("data:image/jpeg;base64,") == 1 and "image unreadable" in html
    assert evil not in html and "&lt;script&gt;" in html and "musiq=61.5" in html


def test_unknown_path_is_one_line_error(tmp_path, capsys):
    from supirkit.cli import main

    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_pair_hook_shows_hq_and_lq_side_by_side_and_survives_a_failing_pair(sets):
    """``make_pair_tiles`` takes any ``make_pair(rgb, key) -> (hq, lq)``: both shown in boxes of one size,
    labelled with their full sizes; a pair that cannot be made is a tile with the reason, not a crash."""
    from supirkit.datapipe.decode import decode_rgb
    from supirkit.inspection import iter_samples, make_pair_tiles, open_collection

    _, out, _ = sets
    samples = list(iter_samples(open_collection(out), 3))
    bad = samples[1].key
    seen = []

    def make_pair(rgb, key):
        seen.append((key, rgb.shape))
        if key == bad:
            raise ValueError("no crop fits")
        return rgb, rgb[::2, ::2]

    tiles = make_pair_tiles(samples, 64, make_pair)
    full = decode_rgb(samples[0].image)[0]
    assert seen[0] == (samples[0].key, full.shape)  # made from the full-resolution decode
    (hq_label, hq), (lq_label, lq) = tiles[0].images
    h, w = full.shape[:2]
    assert hq_label == f"HQ {w}x{h}" and lq_label == f"LQ {(w + 1) // 2}x{(h + 1) // 2}"
    assert hq.shape == lq.shape == full.shape and np.array_equal(hq, full)
    assert np.array_equal(lq[::2, ::2], full[::2, ::2])  # enlarged by nearest neighbour: LQ pixels stay pixels
    assert tiles[1].images == [] and "no crop fits" in tiles[1].error and tiles[2].images


def test_view_hook_gets_full_resolution_pixels_and_its_images_fit_the_tile(sets):
    from supirkit.datapipe.decode import decode_rgb
    from supirkit.inspection import iter_samples, make_tiles, open_collection

    _, out, _ = sets
    samples = list(iter_samples(open_collection(out), 2))
    calls = []

    def views(rgb, meta):
        calls.append((meta["key"], rgb.shape))
        if len(calls) == 2:
            raise RuntimeError("profile refused this one")
        return [("big", np.zeros((500, 300, 3), np.uint8)), ("small", np.full((4, 4, 3), 200, np.uint8))]

    tiles = make_tiles(samples, 32, views=views)
    assert calls[0] == (samples[0].key, decode_rgb(samples[0].image)[0].shape)
    labels = [(label, img.shape) for label, img in tiles[0].images]
    assert labels[1:] == [("big", (32, 19, 3)), ("small", (32, 32, 3))]  # fitted to the 32 px box
    assert tiles[1].images == [] and "profile refused" in tiles[1].error


def test_degrade_option_draws_profile_pairs_in_grid_and_html(sets, tmp_path, capsys):
    from PIL import Image

    from supirkit.commands.inspect import degrade_pair_fn

    _, out, _ = sets
    make_pair = degrade_pair_fn("degrade/realesrgan_x4.yaml")  # hq_size 256, x4
    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    hq, lq = make_pair(rgb, "k1")
    assert hq.shape == (256, 256, 3) and lq.shape == (64, 64, 3)
    assert np.array_equal(hq, rgb[22:278, 72:328])  # the centre crop
    assert np.array_equal(make_pair(rgb, "k1")[1], lq)  # a function of the key

    grid, page = tmp_path / "pairs.png", tmp_path / "pairs.html"
    code, text = inspect([str(out), "--no-summary", "--n", "2", "--grid", str(grid), "--html", str(page),
                          "--degrade", "degrade/realesrgan_x4.yaml", "--set", "grid.thumb=64",
                          "--set", "grid.columns=1"], capsys)
    assert code == 0 and "contact sheet of 2 samples" in text
    assert Image.open(grid).size[0] == 2 * 64 + 2 + 12  # two views per cell
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 4 and html.count("<figcaption>HQ 256x256</figcaption>") == 2 \
        and html.count("<figcaption>LQ 64x64</figcaption>") == 2


def test_degrade_option_fails_early_in_one_line(sets, tmp_path, capsys):
    from supirkit.cli import main

    _, out, _ = sets
    assert main(["inspect", str(out), "--grid", str(tmp_path / "g.png"), "--degrade", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0] and not (tmp_path / "g.png").exists()
    assert main(["inspect", str(out), "--degrade", "degrade/supir.yaml"]) == 2
    assert "--grid or --html" in capsys.readouterr().err
