"""degrade: profiles, the Degrader API, determinism, sampled-parameter distributions and config errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from degrade_fixtures import photo
from scipy import stats

import supirkit.degrade as degrade
from supirkit.datapipe.config import CONFIG_ROOT, ConfigError
from supirkit.degrade import PROFILES, Degrader
from supirkit.degrade.jpeg import to_uint8
from supirkit.degrade.sharpen import unsharp_mask

cv2.setNumThreads(1)
P_MIN = 1e-4  # goodness-of-fit threshold: a correct sampler fails one check in 10,000




def small(profile: str, side: int = 64, out: str | int | None = None) -> Degrader:
    sets = [f"hq_size={side}"]
    if out is not None:
        sets.append(f"output.size={out}")
    return Degrader.from_profile(profile, sets)


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("profile,hq_side,lq_shape,sharp_target", [
    ("supir", 512, (512, 512), False),
    ("realesrgan_x4", 256, (64, 64), False),
    ("diffbir_realesrgan", 512, (512, 512), True),
    ("diffbir_codeformer", 512, (512, 512), False),
])
def test_profiles_output_types_sizes_and_targets(profile, hq_side, lq_shape, sharp_target):
    d = Degrader.from_profile(profile)
    assert d.config.name == profile and d.config.hq_size == hq_side
    hq = photo(0, hq_side, hq_side)
    for key in ("a", "b"):
        target, lq, params = d(hq, seed=1, epoch=0, key=key)
        assert lq.dtype == np.uint8 and lq.shape == (*lq_shape, 3)
        assert target.dtype == np.uint8 and target.shape == hq.shape
        assert lq.min() >= 0 and lq.max() <= 255 and lq.std() > 1  # a real image, not a constant
        assert params["sizes"]["out"] == list(lq_shape) and params["profile"] == profile
        json.loads(json.dumps(params))  # JSON-able
        if sharp_target:
            np.testing.assert_array_equal(target, to_uint8(unsharp_mask(hq)))
            assert not np.array_equal(target, hq)
        else:
            assert target is hq or np.array_equal(target, hq)


def test_supir_lq_is_resized_back_from_hq_over_4():
    d = small("supir", 96, out=96)
    target, lq, params = d(photo(1, 96, 96), seed=0, key="k")
    assert params["sizes"]["lq"] == [24, 24] and lq.shape == (96, 96, 3)
    d = small("supir", 128, out=64)  # the 1024 -> 256 -> 512 case, scaled down
    _, lq, params = d(photo(2, 128, 128), seed=0, key="k")
    assert params["sizes"]["lq"] == [32, 32] and lq.shape == (64, 64, 3)


def test_lq_from_unsharp_masked_hq_is_configurable():
    hq = photo(3, 64, 64)
    on = small("realesrgan_x4")
    off = small("realesrgan_x4")
    off.config.sharpen.lq_from_sharpened = False
    _, lq_on, p_on = on(hq, seed=0, key="x")
    _, lq_off, p_off = off(hq, seed=0, key="x")
    assert p_on["sharpened_lq"] and not p_off["sharpened_lq"]
    assert p_on["first"] == p_off["first"]  # same draws
    assert not np.array_equal(lq_on, lq_off)


def test_input_is_checked():
    d = small("realesrgan_x4", 64)
    with pytest.raises(ValueError, match="64x64"):
        d(photo(0, 80, 64), key="x")
    with pytest.raises(ValueError, match="uint8"):
        d(photo(0, 64, 64).astype(np.float32), key="x")
    free = Degrader.from_profile("realesrgan_x4", ["hq_size=null"])
    _, lq, _ = free(photo(0, 80, 64), key="x")
    assert lq.shape == (20, 16, 3)


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_epoch_key_same_output_and_params():
    d = small("supir", 64, out=64)
    hq = photo(4, 64, 64)
    a = d(hq, seed=3, epoch=2, key="img-7")
    b = d(hq, seed=3, epoch=2, key="img-7")
    np.testing.assert_array_equal(a[1], b[1])
    assert (
        a[2]
        == b[2]
        == d.sample_params(seed=3, epoch=2, key="img-7")
        | {k: a[2][k] for k in ("sizes", "sharpened_lq", "sharpened_target")}
    )
    for other in ({"seed": 4, "epoch": 2, "key": "img-7"}, {"seed": 3, "epoch": 3, "key": "img-7"},
                  {"seed": 3, "epoch": 2, "key": "img-8"}):
        c = d(hq, **other)
        assert c[2]["first"] != a[2]["first"] or not np.array_equal(c[1], a[1])
    # no global state: reseeding or drawing from numpy's global generator changes nothing
    np.random.seed(123)
    np.random.random(10)
    np.testing.assert_array_equal(d(hq, seed=3, epoch=2, key="img-7")[1], a[1])


def test_gray_noise_differs_between_samples():
    # The reference gives every gray-noise sample of a batch the same noise pattern; here each sample has its own.
    d = small("realesrgan_x4", 64)
    d.config.sharpen.lq_from_sharpened = False
    st = d.config.realesrgan.first
    st.blur_prob = 0.0
    st.resize.probs.up, st.resize.probs.down, st.resize.probs.keep = 0.0, 0.0, 1.0
    st.noise.gaussian_prob, st.noise.gray_prob, st.noise.gaussian_sigma = 1.0, 1.0, (20.0, 20.0)
    st.jpeg.quality = (100.0, 100.0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    from supirkit.degrade.pipeline import _generators, run_realesrgan

    residuals = []
    for key in ("p", "q"):
        params = d.sample_params(seed=0, key=key)
        rngs = _generators(0, 0, key, 3)
        base = flat.astype(np.float32) / 255
        from supirkit.degrade.pipeline import _noise

        residuals.append(_noise(base, params["first"]["noise"], rngs[1], "fixed")[..., 0] - base[..., 0])
        assert params["first"]["noise"]["gray"]
    corr = np.corrcoef(residuals[0].ravel(), residuals[1].ravel())[0, 1]
    assert abs(corr) < 0.1
    _, lq, _ = d(flat, seed=0, key="p")
    assert run_realesrgan  # the full pipeline runs with these settings too
    assert lq.std() > 1


class _Crops:
    """A map-style Dataset of HQ crops whose __getitem__ degrades through the transform."""

    def __init__(self, transform, n: int):
        self.transform, self.n = transform, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        out = self.transform({"__key__": f"sample-{i:03d}", "jpg": photo(i, 48, 48)})
        return {"lq": out["lq"], "target": out["target"], "params": out["params"]}


def test_dataloader_worker_count_does_not_change_outputs():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    d = Degrader.from_profile("supir", ["hq_size=48", "output.size=48"])
    transform = d.as_transform(seed=11, epoch=5)
    results = []
    for workers in (0, 2):
        loader = DataLoader(_Crops(transform, 6), batch_size=2, num_workers=workers, shuffle=False,
                            worker_init_fn=degrade.worker_init_fn)
        batches = list(loader)
        results.append((torch.cat([b["lq"] for b in batches]).numpy(), sum((b["params"] for b in batches), [])))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert results[0][0].shape == (6, 48, 48, 3)
    transform.set_epoch(6)
    other = transform({"__key__": "sample-000", "jpg": photo(0, 48, 48)})
    assert json.loads(other["params"])["epoch"] == 6 and not np.array_equal(other["lq"], results[0][0][0])


def test_transform_on_webdataset_style_samples():
    d = small("realesrgan_x4", 32)
    t = d.as_transform(seed=0, params_format="dict")
    sample = {"__key__": "abc", "__url__": "shard-000.tar", "png": photo(5, 32, 32), "txt": "a cat"}
    out = t(sample)
    assert out["txt"] == "a cat" and out["lq"].shape == (8, 8, 3) and out["params"]["key"] == "abc"
    np.testing.assert_array_equal(out["lq"], d(sample["png"], seed=0, epoch=0, key="abc")[1])
    with pytest.raises(KeyError, match="__key__"):
        t({"png": photo(5, 32, 32)})


def test_transform_in_a_real_webdataset_pipeline_and_pickled(tmp_path):
    import io
    import pickle
    import tarfile

    wds = pytest.importorskip("webdataset")
    from PIL import Image

    shard = tmp_path / "shard-000000.tar"
    crops = {f"{i:06d}": photo(20 + i, 32, 32) for i in range(3)}
    with tarfile.open(shard, "w") as tar:
        for key, rgb in crops.items():
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    d = small("realesrgan_x4", 32)
    # DataLoader workers started with "spawn" receive the transform pickled.
    transform = pickle.loads(pickle.dumps(d.as_transform(seed=7, epoch=1)))
    out = list(wds.WebDataset(str(shard), shardshuffle=False).decode("rgb8").map(transform))
    assert [s["__key__"] for s in out] == list(crops)
    for s in out:
        target, lq, params = d(crops[s["__key__"]], seed=7, epoch=1, key=s["__key__"])
        np.testing.assert_array_equal(s["lq"], lq)
        np.testing.assert_array_equal(s["target"], target)
        assert json.loads(s["params"]) == json.loads(json.dumps(params))


def test_building_and_sampling_do_not_load_opencv():
    import subprocess
    import sys

    code = ("import sys; from supirkit.degrade import Degrader; d = Degrader.from_profile('supir'); "
            "d.sample_params(0, 0, 'k'); print([m for m in ('cv2', 'torch', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


def test_from_spec_accepts_names_paths_configs_and_degraders():
    by_name = Degrader.from_spec("supir", ["hq_size=64"])
    assert by_name.config.hq_size == 64
    by_path = Degrader.from_spec(CONFIG_ROOT / "degrade" / "realesrgan_x4.yaml")
    assert by_path.config.name == "realesrgan_x4"
    by_config = Degrader.from_spec(by_name.config, ["output.size=32"])
    assert by_config.config.output.size == 32 and by_config.config.hq_size == 64
    assert by_name.config.output.size == 512  # the source config is not modified
    assert Degrader.from_spec(by_name) is by_name
    hq = photo(9, 64, 64)
    np.testing.assert_array_equal(by_config(hq, key="z")[1], small("supir", 64, out=32)(hq, key="z")[1])
    with pytest.raises(ConfigError, match="not found"):
        Degrader.from_spec("no_such_profile")
    with pytest.raises(ConfigError, match="output.size"):
        by_name.with_overrides(["output.size=-3"])


# ------------------------------------------------------------------------------------------------ distributions
@pytest.fixture(scope="module")
def draws():
    d = Degrader.from_profile("realesrgan_x4")
    return d.config.realesrgan, [d.sample_params(seed=0, epoch=0, key=i) for i in range(3000)]


def _chi2(counts: dict, expected_probs: dict) -> float:
    keys = list(expected_probs)
    obs = np.array([counts.get(k, 0) for k in keys], float)
    exp = np.array([expected_probs[k] for k in keys], float)
    assert sum(counts.values()) == obs.sum(), f"unexpected categories: {set(counts) - set(keys)}"
    return stats.chisquare(obs, exp / exp.sum() * obs.sum()).pvalue


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _binomial_p(successes: int, n: int, p: float) -> float:
    return stats.binomtest(successes, n, p).pvalue


def test_kernel_draws_follow_the_config(draws):
    cfg, ps = draws
    blur = cfg.first.blur
    kernels = [p["first"]["blur"] for p in ps]
    assert _chi2(_count(k["size"] for k in kernels), {s: 1 for s in blur.kernel_sizes}) > P_MIN
    n_sinc = sum(k["family"] == "sinc" for k in kernels)
    assert _binomial_p(n_sinc, len(kernels), blur.sinc_prob) > P_MIN
    fams = [k["family"] for k in kernels if k["family"] != "sinc"]
    assert _chi2(_count(fams), dict(zip(("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                                         "plateau_aniso"), blur.families.weights()))) > P_MIN
    sig = [k["sigma_x"] for k in kernels if k["family"] != "sinc"]
    assert stats.kstest(sig, stats.uniform(blur.sigma[0], blur.sigma[1] - blur.sigma[0]).cdf).pvalue > P_MIN
    aniso = [k for k in kernels if "aniso" in k["family"]]
    assert stats.kstest([k["sigma_y"] for k in aniso], stats.uniform(0.2, 2.8).cdf).pvalue > P_MIN
    assert stats.kstest([k["theta"] for k in aniso], stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > P_MIN
    iso = [k for k in kernels if k["family"] in ("iso", "generalized_iso", "plateau_iso")]
    assert all(k["sigma_y"] == k["sigma_x"] and k["theta"] == 0 for k in iso)
    # generalized beta: U(0.5, 1) or U(1, 4) with p = 1/2 each
    betag = [k["beta"] for k in kernels if k["family"].startswith("generalized")] + \
            [p["second"]["blur"]["beta"] for p in ps if p["second"]["blur"] and
             p["second"]["blur"]["family"].startswith("generalized")]

    def mix_cdf(x):
        return 0.5 * np.clip((x - 0.5) / 0.5, 0, 1) + 0.5 * np.clip((x - 1) / 3, 0, 1)

    assert stats.kstest(betag, mix_cdf).pvalue > P_MIN
    # plateau beta with betap [1, 2]: exactly 1 half the time (U(1, 1)), else U(1, 2)
    betap = [k["beta"] for k in kernels if k["family"].startswith("plateau")]
    ones = [b for b in betap if b == 1.0]
    assert _binomial_p(len(ones), len(betap), 0.5) > P_MIN
    assert stats.kstest([b for b in betap if b != 1.0], stats.uniform(1, 1).cdf).pvalue > P_MIN
    # sinc cutoff: U(pi/3, pi) below size 13, U(pi/5, pi) from 13
    sinc = [k for p in ps for k in (p["first"]["blur"], p["second"]["blur"]) if k and k["family"] == "sinc"]
    small_k = [k["cutoff"] for k in sinc if k["size"] < 13]
    large_k = [k["cutoff"] for k in sinc if k["size"] >= 13]
    assert stats.kstest(small_k, stats.uniform(math.pi / 3, 2 * math.pi / 3).cdf).pvalue > P_MIN
    assert stats.kstest(large_k, stats.uniform(math.pi / 5, 4 * math.pi / 5).cdf).pvalue > P_MIN
    # second-stage sigma range
    sig2 = [
        p["second"]["blur"]["sigma_x"] for p in ps if p["second"]["blur"] and p["second"]["blur"]["family"] != "sinc"
    ]
    assert stats.kstest(sig2, stats.uniform(0.2, 1.3).cdf).pvalue > P_MIN


def test_resize_noise_jpeg_and_final_draws_follow_the_config(draws):
    cfg, ps = draws
    n = len(ps)
    for stage, scfg in (("first", cfg.first), ("second", cfg.second)):
        rs = [p[stage]["resize"] for p in ps]
        pr = scfg.resize.probs
        assert _chi2(_count(r["direction"] for r in rs), {"up": pr.up, "down": pr.down, "keep": pr.keep}) > P_MIN
        lo, hi = scfg.resize.range
        assert (
            stats.kstest([r["scale"] for r in rs if r["direction"] == "up"], stats.uniform(1, hi - 1).cdf).pvalue
            > P_MIN
        )
        assert stats.kstest([r["scale"] for r in rs if r["direction"] == "down"],
                            stats.uniform(lo, 1 - lo).cdf).pvalue > P_MIN
        assert all(r["scale"] == 1.0 for r in rs if r["direction"] == "keep")
        assert _chi2(_count(r["mode"] for r in rs), {"area": 1, "bilinear": 1, "bicubic": 1}) > P_MIN
        ns = [p[stage]["noise"] for p in ps]
        gauss = [x for x in ns if x["kind"] == "gaussian"]
        pois = [x for x in ns if x["kind"] == "poisson"]
        assert _binomial_p(len(gauss), n, scfg.noise.gaussian_prob) > P_MIN
        lo, hi = scfg.noise.gaussian_sigma
        assert stats.kstest([x["sigma"] for x in gauss], stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN
        lo, hi = scfg.noise.poisson_scale
        assert stats.kstest([x["scale"] for x in pois], stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN
        assert _binomial_p(sum(x["gray"] for x in ns), n, scfg.noise.gray_prob) > P_MIN
        qs = [p[stage]["jpeg"]["quality"] for p in ps]
        assert stats.kstest(qs, stats.uniform(30, 65).cdf).pvalue > P_MIN
        assert all(p[stage]["jpeg"]["quality_int"] == math.floor(p[stage]["jpeg"]["quality"] + 0.5) for p in ps)
    assert _binomial_p(sum(p["second"]["blur"] is not None for p in ps), n, cfg.second.blur_prob) > P_MIN
    assert all(p["first"]["blur"] is not None for p in ps)  # blur_prob 1.0 in the first stage
    fin = [p["final"] for p in ps]
    assert _binomial_p(sum(f["sinc"] is not None for f in fin), n, cfg.final.sinc_prob) > P_MIN
    assert stats.kstest([f["sinc"]["cutoff"] for f in fin if f["sinc"]],
                        stats.uniform(math.pi / 3, 2 * math.pi / 3).cdf).pvalue > P_MIN
    assert _chi2(_count(f["sinc"]["size"] for f in fin if f["sinc"]), {s: 1 for s in range(7, 22, 2)}) > P_MIN
    assert _binomial_p(sum(f["order"] == "sinc_then_jpeg" for f in fin), n, 0.5) > P_MIN
    assert _chi2(_count(f["resize_mode"] for f in fin), {"area": 1, "bilinear": 1, "bicubic": 1}) > P_MIN
    assert stats.kstest([f["jpeg"]["quality"] for f in fin], stats.uniform(30, 65).cdf).pvalue > P_MIN


def test_a_wrong_sampler_would_fail_these_checks(draws):
    # Sanity of the statistics themselves: the first-stage sigma is not U(0.2, 2.5), nor jpeg U(30, 90).
    _, ps = draws
    sig = [p["first"]["blur"]["sigma_x"] for p in ps if p["first"]["blur"]["family"] != "sinc"]
    assert stats.kstest(sig, stats.uniform(0.2, 2.3).cdf).pvalue < P_MIN
    assert stats.kstest([p["first"]["jpeg"]["quality"] for p in ps], stats.uniform(30, 60).cdf).pvalue < P_MIN


def test_codeformer_draws_follow_the_config():
    d = Degrader.from_profile("diffbir_codeformer")
    cfg = d.config.codeformer
    ps = [d.sample_params(seed=1, key=i) for i in range(1500)]
    assert all(p["blur"]["size"] == 41 and p["blur"]["family"] in ("iso", "aniso") for p in ps)
    assert _binomial_p(sum(p["blur"]["family"] == "iso" for p in ps), len(ps), 0.5) > P_MIN
    assert stats.kstest([p["blur"]["sigma_x"] for p in ps], stats.uniform(0.1, 11.9).cdf).pvalue > P_MIN
    assert stats.kstest([p["downsample"] for p in ps], stats.uniform(1, 11).cdf).pvalue > P_MIN
    assert stats.kstest([p["noise"]["sigma"] for p in ps], stats.uniform(0, 15).cdf).pvalue > P_MIN
    assert not any(p["noise"]["gray"] for p in ps)
    assert all(p["jpeg"]["quality_int"] == math.floor(p["jpeg"]["quality"]) for p in ps)
    assert cfg.jpeg.to_int == "floor"


# ------------------------------------------------------------------------------------------------ configs
def _profile_dict(name: str) -> dict:
    return yaml.safe_load((CONFIG_ROOT / "degrade" / f"{name}.yaml").read_text())


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("edit,key", [
    (lambda d: d["realesrgan"]["first"]["noise"].update(gray_prob=1.5), "realesrgan.first.noise.gray_prob"),
    (lambda d: d["realesrgan"]["second"]["blur"].update(sigma=[1.5, 0.2]), "realesrgan.second.blur.sigma"),
    (lambda d: d["realesrgan"]["first"]["blur"].update(kernel_sizes=[7, 8]), "realesrgan.first.blur.kernel_sizes"),
    (lambda d: d["realesrgan"]["final"]["jpeg"].update(quality=[30, 120]), "realesrgan.final.jpeg.quality"),
    (lambda d: d["realesrgan"]["first"]["resize"].update(range=[1.2, 1.5]), "realesrgan.first.resize.range"),
    (lambda d: d["realesrgan"]["first"]["blur"].update(rotation=["-pi", "tau"]), "realesrgan.first.blur.rotation"),
    (lambda d: d["realesrgan"]["first"]["noise"].update(gaussian_sigmaa=[1, 2]),
     "realesrgan.first.noise.gaussian_sigmaa"),
    (lambda d: d["output"].update(size="small"), "output.size"),
    (lambda d: d["quirks"].update(poisson_levels="many"), "quirks.poisson_levels"),
    (lambda d: d["sharpen"].pop("weight"), "sharpen.weight"),
])
def test_invalid_yaml_value_gives_config_error_naming_the_key(tmp_path, edit, key):
    data = _profile_dict("supir")
    edit(data)
    with pytest.raises(ConfigError) as err:
        Degrader.from_config(_write(tmp_path, data))
    assert f": {key}" in str(err.value) and "\n" not in str(err.value)


def test_pipeline_section_must_match(tmp_path):
    data = _profile_dict("supir")
    data["pipeline"] = "codeformer"
    with pytest.raises(ConfigError, match="codeformer"):
        Degrader.from_config(_write(tmp_path, data))


def test_angles_and_overrides():
    d = Degrader.from_profile("supir", ["realesrgan.final.sinc_cutoff=[pi/4, 2*pi/3]"])
    assert d.config.realesrgan.final.sinc_cutoff == pytest.approx((math.pi / 4, 2 * math.pi / 3))
    assert d.config.realesrgan.first.blur.rotation == pytest.approx((-math.pi, math.pi))
    with pytest.raises(ConfigError, match="realesrgan.scale"):
        Degrader.from_profile("supir", ["realesrgan.scale=0"])


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_lists_every_parameter(name):
    # "Every parameter in YAML": the shipped files set each field explicitly (no silent schema default).
    from supirkit.degrade.config import DegradeConfig

    def walk(model_cls, data, where):
        for field, info in model_cls.model_fields.items():
            if field == "description":
                continue
            if field in ("realesrgan", "codeformer", "classical") and data.get("pipeline") != field:
                continue
            assert field in data, f"{name}: {where}{field} is not in the YAML"
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields") and isinstance(data[field], dict):
                walk(sub, data[field], f"{where}{field}.")

    walk(DegradeConfig, _profile_dict(name), "")
    Degrader.from_profile(name)
