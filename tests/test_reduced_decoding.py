"""Consumers that do not need native resolution decode JPEGs at a DCT reduction: curation's downscaled
copy (when no scorer reads native tiles), caption inputs, resized training crops. Sizes stay those of a
full decode; pixels change by a few gray levels (documented where each consumer decodes)."""
from __future__ import annotations

import io

import numpy as np
import pytest


def _jpeg(h: int, w: int, seed: int = 3, quality: int = 92) -> bytes:
    from PIL import Image

    from supirkit.demo.samples import textured_photo

    buf = io.BytesIO()
    Image.fromarray(textured_photo(seed, h, w)).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def test_curation_decodes_once_at_full_size_when_a_scorer_reads_native_tiles():
    from supirkit.curation.signals import ImageView, ViewOptions, build_cheap_scorers, decode_for, score_views

    data = _jpeg(1200, 1600)
    opt = ViewOptions(small_side=256)
    everything = build_cheap_scorers(["detail", "jpeg", "texture", "colour", "borders", "phash"])
    rgb, header = decode_for(everything, data, options=opt)
    assert header.reduction == 1 and rgb.shape == (1200, 1600, 3)

    copy_only = build_cheap_scorers(["texture", "colour", "borders", "phash"])
    small_rgb, small_header = decode_for(copy_only, data, options=opt)
    assert small_header.reduction == 4 and small_rgb.shape == (300, 400, 3)  # 1200 / 4 >= 256 > 1200 / 8
    full, reduced = ImageView(rgb, header, data, opt), ImageView(small_rgb, small_header, data, opt)
    assert (reduced.width, reduced.height) == (1600, 1200)
    assert reduced.small.shape == full.small.shape == (256, 341, 3)
    assert np.abs(reduced.small.astype(int) - full.small).mean() < 2.0
    a, b = score_views(copy_only, [full])[0], score_views(copy_only, [reduced])[0]
    assert a.keys() == b.keys()
    assert bin(int(a["phash"], 16) ^ int(b["phash"], 16)).count("1") <= 4  # the near-duplicate threshold
    assert abs(a["colourfulness"] - b["colourfulness"]) < 0.02 * a["colourfulness"]
    assert abs(a["texture"] - b["texture"]) < 0.15 * a["texture"]
    with pytest.raises(ValueError, match="native"):
        reduced.detail_tiles


def test_model_inputs_larger_than_the_copy_keep_their_size():
    from supirkit.curation.signals import Scorer, ViewOptions, decode_for

    class Model(Scorer):
        needs_native = False
        input_side = 448

    rgb, header = decode_for([Model()], _jpeg(1200, 1600), options=ViewOptions(small_side=256))
    assert header.reduction == 2 and min(rgb.shape[:2]) >= 448


def test_caption_input_is_decoded_reduced_with_the_full_decodes_size():
    from supirkit.captioning.images import fit_image, limit_side, prepare_image
    from supirkit.datapipe.decode import decode_rgb

    data = _jpeg(1536, 2048)
    image = prepare_image(data, "pad", 336, (10, 20, 30), 10 ** 9)
    full = fit_image(limit_side(decode_rgb(data)[0], 336), "pad", (10, 20, 30))
    got = np.asarray(image)
    assert got.shape == full.shape == (336, 336, 3)
    assert np.array_equal(got[:40], full[:40])  # the padding is exact
    assert np.abs(got.astype(int) - full).mean() < 2.0
    curated = _jpeg(1024, 1024)  # 1/2 would be 512 < 672: decoded at full size, pixels unchanged
    assert np.array_equal(np.asarray(prepare_image(curated, "pad", 672, (0, 0, 0), 10 ** 9)),
                          limit_side(decode_rgb(curated)[0], 672))


def test_resized_training_crops_decode_reduced_and_keep_the_native_size_for_conditioning(tmp_path, monkeypatch):
    from train_fixtures import data_section, write_shard_set

    from supirkit.datapipe import decode
    from supirkit.train.data import MixtureStream

    write_shard_set(tmp_path / "hq", "hq", 1, 3, size=(192, 256), seed=4)
    mixture = [{"name": "hq", "shards": str(tmp_path / "hq"), "weight": 1.0}]
    reductions = []
    reduced = decode.decode_rgb_reduced

    def spy(*args, **kwargs):
        rgb, header = reduced(*args, **kwargs)
        reductions.append(header.reduction)
        return rgb, header

    monkeypatch.setattr(decode, "decode_rgb_reduced", spy)
    stream = MixtureStream(data_section(mixture, crop={"size": 64, "hflip_prob": 0.5, "resize_short_side": 64},
                                        micro_conditioning="metadata"), seed=1, batch_size=1)
    sample = stream.sample(0)
    assert reductions == [2]  # 192 / 2 >= 64 > 192 / 4
    assert sample["hq"].shape == (64, 64, 3)
    h0, w0, top, left, _, _ = sample["time_ids"]
    assert (h0, w0) == (192.0, 256.0) and top == 0 and 0 <= left <= 256 - 192
