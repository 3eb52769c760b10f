"""The parity switches of the degradation (``quirks``) against the reference: ``jpeg_codec: diffjpeg`` against
BasicSR's own ``DiffJPEG`` (where basicsr is installed) and against a re-statement of its formulas; the
degradation seed of training draws (``data.degrade_seed: draw``): repeated draws of one image differ,
resuming repeats them."""
from __future__ import annotations

import numpy as np
import pytest
from degrade_fixtures import photo

QUALITIES = [30.0, 37.25, 50.0, 64.9, 95.0]


def _basicsr_diffjpeg():
    from test_degrade import basicsr_module

    return basicsr_module("utils/diffjpeg.py").DiffJPEG(differentiable=False)


@pytest.mark.parametrize("shape", [(64, 64), (57, 83), (48, 130)])
def test_diffjpeg_equals_basicsr_diffjpeg(shape):
    """Float quality, unrounded transposed tables, black padding to 16 (57 and 83 are not multiples), nearest
    chroma upsampling: BasicSR's module on CPU torch against ours, to float32 precision."""
    torch = pytest.importorskip("torch")
    ref_codec = _basicsr_diffjpeg()
    from supirkit.degrade.diffjpeg import diffjpeg_roundtrip

    img = photo(3, *shape).astype(np.float32) / 255.0
    img[:4] = 1.2  # out of range: both clamp first
    for q in QUALITIES:
        with torch.no_grad():
            ref = ref_codec(torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1)[None],
                            quality=torch.tensor([q]))[0].permute(1, 2, 0).numpy()
        ours = diffjpeg_roundtrip(img, q)
        assert ours.shape == ref.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


def test_diffjpeg_restates_the_reference_formulas():
    """Without basicsr: one 16x16 block pair coded by the formulas of ``diffjpeg.py`` written out directly
    (quality factor, transposed luma table, 2x2 mean and 2x2 repeat of chroma, zero padding)."""
    from supirkit.degrade.diffjpeg import diffjpeg_roundtrip

    img = photo(4, 10, 13).astype(np.float32) / 255.0
    q = 42.5
    factor = (5000.0 / q) / 100.0
    x = np.zeros((16, 16, 3), np.float64)
    x[:10, :13] = img * 255.0
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = x @ m.T + [0, 128, 128]
    y_table = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                        [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                        [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                        [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], float).T
    c_table = np.full((8, 8), 99.0)
    c_table[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]).T
    alpha = np.array([1 / np.sqrt(2)] + [1] * 7)

    def code(block, table):
        u = np.arange(8)
        cos = np.cos((2 * u[None, :] + 1) * u[:, None] * np.pi / 16)  # [freq, pos]
        coef = 0.25 * np.outer(alpha, alpha) * np.einsum("xy,ux,vy->uv", block - 128, cos, cos)
        coef = np.round(coef / (table * factor)) * (table * factor)
        return 0.25 * np.einsum("xy,xu,yv->uv", coef * np.outer(alpha, alpha), cos, cos) + 128

    def plane(p, table):
        out = np.empty_like(p)
        for i in range(0, p.shape[0], 8):
            for j in range(0, p.shape[1], 8):
                out[i:i + 8, j:j + 8] = code(p[i:i + 8, j:j + 8], table)
        return out

    yy = plane(ycc[..., 0], y_table)
    chroma = [np.kron(plane(ycc[..., c].reshape(8, 2, 8, 2).mean(axis=(1, 3)), c_table), np.ones((2, 2)))
              for c in (1, 2)]
    inv = np.array([[1.0, 0.0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]])
    want = np.clip((np.stack([yy, *chroma], -1) + [0, -128, -128]) @ inv.T, 0, 255)[:10, :13] / 255
    np.testing.assert_allclose(diffjpeg_roundtrip(img, q), want, atol=1e-4)


def test_diffjpeg_leaves_2x2_chroma_blocks_and_libjpeg_does_not():
    """The chroma-blockiness statistic of benchmarks/bench_degrade_parity.py: (a - i) / (a + i) with ``a`` the
    mean Cb step across pixel pairs and ``i`` the one inside them."""
    from supirkit.degrade.diffjpeg import diffjpeg_roundtrip
    from supirkit.degrade.jpeg import jpeg_roundtrip

    def chroma_steps(out):
        cb = (-0.168736 * out[..., 0] - 0.331264 * out[..., 1] + 0.5 * out[..., 2]).astype(np.float64)
        d = np.abs(np.diff(cb, axis=1))
        across, inside = d[:, 1::2].mean(), d[:, 0::2].mean()
        return (across - inside) / (across + inside)

    img = photo(5, 64, 64).astype(np.float32) / 255.0
    for q in (30, 50, 90):
        assert chroma_steps(diffjpeg_roundtrip(img, float(q))) > 0.8  # inside a pair: one chroma sample
        assert chroma_steps(jpeg_roundtrip(img, q)) < 0.3  # libjpeg's fancy upsampling interpolates


def test_the_codec_switch_changes_only_the_jpeg_steps():
    """``quirks.jpeg_codec`` runs DiffJPEG at the drawn float quality in the realesrgan pipeline; parameters
    (a function of seed, epoch, key) are the same, the pixels differ."""
    from supirkit.degrade import Degrader

    hq = photo(6, 256, 256)
    a = Degrader.from_profile("realesrgan_x4")
    b = Degrader.from_profile("realesrgan_x4", ["quirks.jpeg_codec=diffjpeg"])
    ta, la, pa = a(hq, seed=1, epoch=0, key="k")
    tb, lb, pb = b(hq, seed=1, epoch=0, key="k")
    assert pa == pb and np.array_equal(ta, tb) and la.shape == lb.shape == (64, 64, 3)
    assert not np.array_equal(la, lb)


def test_repeated_draws_of_one_image_get_different_degradations(tmp_path):
    """With replacement, one image is drawn many times: seeded by the draw (the default), each draw has its
    own degradation; a second stream object (a resumed run) reproduces every one; ``degrade_seed: key`` gives
    the old rule (one degradation per image and epoch)."""
    from train_fixtures import data_section, write_shard_set

    from supirkit.train.data import MixtureStream

    write_shard_set(tmp_path / "one", "one", 1, 1, size=(64, 64), seed=3)  # one 64 px image: every draw is it
    mixture = [{"name": "one", "shards": str(tmp_path / "one"), "weight": 1.0}]

    def lqs(**over):
        stream = MixtureStream(data_section(mixture, caption_drop_prob=0.0, crop={"size": 64, "hflip_prob": 0.0},
                                            epoch_samples=100, **over), seed=5)
        return [stream.sample(i) for i in range(4)]

    first, resumed = lqs(), lqs()
    assert len({s["key"] for s in first}) == 1
    assert all(np.array_equal(a["hq"], first[0]["hq"]) for a in first)  # the whole image, never flipped
    assert len({s["lq"].tobytes() for s in first}) == 4  # four draws, four degradations
    for a, b in zip(first, resumed):
        np.testing.assert_array_equal(a["lq"], b["lq"])
    by_key = lqs(degrade_seed="key")
    assert len({s["lq"].tobytes() for s in by_key}) == 1  # one epoch, one key: one degradation
