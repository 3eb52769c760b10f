"""Hostile inputs: tar members that escape, link or claim huge sizes, decompression bombs in the report
and preview paths, markup in captions and keys, and output names that would collide."""
from __future__ import annotations

import io
import tarfile

import pytest
from datapipe_fixtures import jpeg_bytes, png_bytes


def _malicious_tar(path, big: int = 0) -> None:
    """A tar with one good sample ``ok`` and every kind of member a reader must refuse or skip."""
    good = jpeg_bytes(1)
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("../up.jpg", good)
        add("/etc/abs.jpg", good)
        add("a/../../deep.jpg", good)
        add("c:drive.jpg", good)
        add("sym.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add("hard.jpg", kind=tarfile.LNKTYPE, link="ok.jpg")
        add("dev.jpg", kind=tarfile.CHRTYPE)
        add("fifo.jpg", kind=tarfile.FIFOTYPE)
        add("folder.jpg", kind=tarfile.DIRTYPE)
        add("ok.jpg", good)
        add("ok.txt", b"a caption")
        if big:
            add("huge.jpg", b"\0" * big)
            add("huge.txt", b"caption of the large one")


def test_train_reader_refuses_escaping_names_links_and_devices(tmp_path):
    from supirkit.datapipe.tario import TarReader, image_keys, scan_members

    shard = tmp_path / "evil.tar"
    _malicious_tar(shard)
    table = scan_members(str(shard))
    assert sorted(table) == ["ok"] and sorted(table["ok"]) == ["jpg", "txt"]
    assert image_keys(table) == ["ok"]
    sample = TarReader().read(str(shard), "ok")
    assert sample["jpg"] == jpeg_bytes(1) and sample["txt"] == b"a caption"
    with pytest.raises(KeyError):
        TarReader().read(str(shard), "sym")


def test_train_reader_refuses_a_member_over_the_size_limit_from_its_header(tmp_path):
    from supirkit.datapipe.errors import FileTooLarge
    from supirkit.datapipe.tario import TarReader

    shard = tmp_path / "big.tar"
    _malicious_tar(shard, big=4096)
    reader = TarReader(max_member_bytes=2048)
    with pytest.raises(FileTooLarge, match="larger than max_file_bytes=2048"):  # an OSError: MixtureStream draws again
        reader.read(str(shard), "huge")
    assert reader.read(str(shard), "ok")["txt"] == b"a caption"


def test_pipeline_tar_reader_skips_members_over_the_limit_without_reading_them(tmp_path):
    from supirkit.datapipe.tario import image_too_large, iter_tar_samples

    shard = tmp_path / "big.tar"
    _malicious_tar(shard, big=4096)
    unsafe, skipped = [], []
    with open(shard, "rb") as f:
        samples = list(iter_tar_samples(f, on_unsafe=unsafe.append, on_skip=lambda n, why: skipped.append((n, why)),
                                        max_member_bytes=2048))
    assert unsafe == ["../up.jpg", "/etc/abs.jpg", "a/../../deep.jpg", "c:drive.jpg"]
    assert [s["__key__"] for s in samples] == ["ok", "huge"]
    assert samples[1] == {"__key__": "huge", "__too_large__": ["jpg"], "txt": b"caption of the large one"}
    assert ("huge.jpg", "too_large") in skipped and image_too_large(samples[1]) and not image_too_large(samples[0])
    with open(shard, "rb") as f:  # without a limit, as before
        assert len(list(iter_tar_samples(f))[1]["jpg"]) == 4096


def test_reserved_field_names_cannot_overwrite_the_readers_own(tmp_path):
    from supirkit.datapipe.tario import iter_tar_samples

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("k.jpg", b"img"), ("k.__too_large__", b"x"), ("k.__key__", b"other"),
                           ("k.__shard__", b"s")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    skipped = []
    samples = list(iter_tar_samples(io.BytesIO(buf.getvalue()), on_skip=lambda n, why: skipped.append(why),
                                    max_member_bytes=2))
    assert samples == [{"__key__": "k", "__too_large__": ["jpg"]}]
    assert skipped.count("reserved_field") == 3


def test_stage_inputs_reject_an_oversized_member_as_too_large(tmp_path):
    from supirkit.datapipe.inputs import _iter_tar, read_source
    from supirkit.datapipe.stats import UnitStats

    shard = tmp_path / "big.tar"
    _malicious_tar(shard, big=4096)
    stats = UnitStats()
    items = list(_iter_tar(str(shard), 0, stats, max_file_bytes=2048))
    assert [i.source.rsplit("#", 1)[1] for i in items] == ["ok"]
    reasons = {r["source"].rsplit("#", 1)[1]: r["reason"] for r in stats.rejections}
    assert reasons["huge"] == "too_large" and reasons["../up.jpg"] == "unsafe_tar_member"
    assert stats.counts["inputs"] == len(items) + len(stats.rejections)  # every input accounted for
    assert {"member": f"{shard}#huge.jpg", "why": "too_large"} in stats.extra["skipped_members"]
    with pytest.raises(OSError, match="max_file_bytes"):  # the stages' "too_large" wording
        read_source(f"{shard}#huge", max_file_bytes=2048)
    assert read_source(f"{shard}#ok", max_file_bytes=2048) == jpeg_bytes(1)


def test_captioning_refuses_an_oversized_image_member():
    from supirkit.captioning.images import image_bytes_for
    from supirkit.datapipe.errors import DecodeError

    with pytest.raises(DecodeError) as err:
        image_bytes_for({"__key__": "k", "__too_large__": ["jpg"]}, {}, "curated", 2048)
    assert err.value.reason == "too_large"
    with pytest.raises(DecodeError) as err:
        image_bytes_for({"__key__": "k", "jpg": b"x" * 4096}, {}, "curated", 2048)
    assert err.value.reason == "too_large"
    assert image_bytes_for({"__key__": "k", "jpg": b"x" * 10}, {}, "curated", 2048) == b"x" * 10


def test_inspect_summary_does_not_count_members_the_readers_refuse(tmp_path):
    from supirkit.inspection import summarize

    shard = tmp_path / "evil.tar"
    _malicious_tar(shard)
    summary = summarize(str(shard))
    assert summary["samples"] == 1 and summary["fields"]["jpg"] == 1 and summary["fields"]["(image)"] == 1


def test_inspect_html_escapes_captions_keys_and_metadata_from_a_shard(tmp_path):
    import json

    from supirkit.inspection import iter_samples, make_tiles, open_collection, write_html

    evil = "<script>alert(1)</script>"
    key = "<img src=x onerror=alert(1)>"
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, mode="w") as tar:
        for name, data in ((f"{key}.jpg", jpeg_bytes(2)), (f"{key}.txt", evil.encode()),
                           (f"{key}.json", json.dumps({"source": evil, "note": evil}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(iter_samples(open_collection(shard), 4))
    assert [s.key for s in samples] == [key] and samples[0].caption == evil
    page = write_html(make_tiles(samples, 64), tmp_path / "p.html", title=evil).read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_curate_report_thumbnails_go_through_the_pixel_limit():
    from supirkit.curation.report import _thumb
    from supirkit.datapipe.decode import DecodeError

    data = png_bytes(3, h=100, w=100)
    assert _thumb(data, 32, max_pixels=10_000).shape == (32, 32, 3)
    with pytest.raises(DecodeError) as err:  # refused from the header, not decoded for a picture
        _thumb(data, 32, max_pixels=9_999)
    assert err.value.reason == "too_many_pixels"


def test_degrade_preview_decodes_through_the_shared_limit(tmp_path, capsys, monkeypatch):
    import supirkit.commands.degrade as cmd
    from supirkit.cli import main

    src = tmp_path / "a.png"
    src.write_bytes(png_bytes(4, h=300, w=300))
    from supirkit.datapipe.config import DecodeConfig

    monkeypatch.setattr(cmd, "decode_guards", lambda: DecodeConfig(max_pixels=300 * 300 - 1))
    assert main(["degrade", "preview", str(src), "--out", str(tmp_path / "g.png"), "--n", "1"]) == 2
    assert "too large to preview" in capsys.readouterr().err
    monkeypatch.setattr(cmd, "decode_guards", lambda: DecodeConfig(max_file_bytes=100))
    assert main(["degrade", "preview", str(src), "--out", str(tmp_path / "g.png"), "--n", "1"]) == 2
    assert "larger than 100 bytes" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_restore_refuses_inputs_whose_outputs_would_overwrite_each_other(tmp_path):
    from supirkit.model.restore import restore_images

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "photo.jpg").write_bytes(jpeg_bytes(5))
    # refused before any model is loaded (the SDXL path does not exist)
    with pytest.raises(ValueError, match="both be written as photo.png"):
        restore_images([tmp_path / "a" / "photo.jpg", tmp_path / "b" / "photo.jpg"], tmp_path / "out",
                       sdxl=str(tmp_path / "no-sdxl"), adaptor=str(tmp_path / "no-adaptor"), config=None)
    assert not (tmp_path / "out").exists()
