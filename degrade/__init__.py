"""degrade: Real-ESRGAN second-order degradation of HQ training crops, on the CPU, per sample.

The door is ``Degrader``::

    from supirkit.degrade import Degrader
    degrader = Degrader.from_profile("supir")          # configs/degrade/supir.yaml
    degrader = Degrader.from_config("my.yaml", ["realesrgan.final.sinc_prob=0.5"])   # --set style overrides
    degrader = Degrader.from_spec(name_or_path_or_config)                            # whichever you hold
    target, lq, params = degrader(hq, seed=0, epoch=3, key="000123")

* ``hq``: the HQ training crop, HxWx3 uint8 RGB, ``config.hq_size`` square when the profile sets it (the
  data pipeline crops; the degrader does not).
* ``target``: what the model should reproduce, HxWx3 uint8 (the crop itself, or its unsharp-masked version
  in the ``diffbir_realesrgan`` profile).
* ``lq``: the degraded image, uint8 RGB at ``degrader.output_size(h, w)`` (512x512 for ``supir``).
* ``params``: every random choice of the sample (kernels, resizes, noise, JPEG qualities, final order) and
  the intermediate sizes, a JSON-able dict for logging; ``degrader.sample_params(seed, epoch, key)`` gives
  the same draws without touching pixels.

Determinism: the output is a function of (profile, seed, epoch, key) only: the generators are seeded from a
hash of the triple, no global random state is read or written, so any number of DataLoader workers, any
order and any restart give the same pairs. ``key`` is whatever identifies one degradation: the image's key
(one degradation per image and epoch) or, in training, the draw (``draw_key(rank, index)``: an image drawn
twice is degraded twice).

Data loaders: ``degrader.as_transform(seed=, epoch=)`` returns a ``DegradeTransform``, a picklable callable
that maps a webdataset-style sample dict (``__key__`` + a decoded RGB uint8 image under jpg/png/... or
``image_key``) to the same dict plus ``target``, ``lq`` and ``params`` (a JSON string by default, which the
default collate batches as a list). Use it in ``wds.WebDataset(...).decode("rgb8").map(transform)`` or call
it from a map-style Dataset's ``__getitem__``; ``transform.set_epoch(e)`` before each epoch's iterator.
Pass ``worker_init_fn=degrade.worker_init_fn`` (or call it in yours) so each worker runs OpenCV on one thread.

Pictures (``degrade.preview``): ``contact_sheet`` (N LQ variants of one crop; ``supirkit degrade preview``),
``render_pairs(images, profile, seed=)`` (HQ/LQ rows as a uint8 array) and ``inspect_views(profile, seed=)``
(the per-sample view hook of ``datapipe.inspection.make_tiles``, for ``supirkit inspect --degrade``).

Profiles: ``configs/degrade/<name>.yaml`` for each name in ``PROFILES`` (SUPIR, Real-ESRGAN x4plus, DiffBIR's
two, SeeSR's and ResShift's training recipes, ResShift's test set, and ``classical_x4``: the classical test
model y = (x * k)↓s + n of ``degrade.classical``), schema ``DegradeConfig``. The algorithm, the profiles and
where the output differs from the reference implementation (and why): ``degrade/README.md``.
"""
from supirkit.degrade.config import DegradeConfig
from supirkit.degrade.pipeline import Degrader, DegradeTransform, draw_key, worker_init_fn

PROFILES = ("supir", "realesrgan_x4", "diffbir_realesrgan", "diffbir_codeformer", "seesr", "resshift", "resshift_test",
            "classical_x4")

__all__ = ["Degrader", "DegradeTransform", "DegradeConfig", "PROFILES", "draw_key", "worker_init_fn"]
