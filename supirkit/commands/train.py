"""supirkit train"""
from __future__ import annotations

HELP = "train SUPIR's adaptor (or, with --stage encoder, its degradation-robust encoder) with accelerate"
DESCRIPTION = (
    HELP + ". Validates the config, then runs `accelerate launch [--config_file L] -m supirkit.train --config C ...` "
    "(a list argv, no shell). Rerun with --resume latest to continue a run where it stopped."
)


#: the launchers shipped in configs/accelerate
LAUNCHERS = ("single_gpu", "ddp_8gpu", "multi_node", "fsdp", "deepspeed_zero2", "cpu_2proc")


def add_arguments(p):
    from supirkit.commands._common import add_config_args

    add_config_args(p, "train/supir.yaml", example="schedule.max_steps=100")
    p.add_argument("--stage", choices=["adaptor", "encoder"],
                   help="what to train (default: the config's stage; --stage encoder defaults to train/encoder.yaml)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides output_dir)")
    p.add_argument("--resume", metavar="latest|DIR",
                   help="continue from the newest checkpoint (latest; starts fresh when there is none), a checkpoint "
                        "folder, or a step-N name under OUT/checkpoints")
    p.add_argument("--stop-at-step", type=int, metavar="N", help="stop (with a checkpoint) after step N")
    p.add_argument("--launcher", "--accelerate-config", dest="launcher", metavar="NAME|FILE",
                   help=f"accelerate config: a file, or a shipped one by name from any folder "
                        f"({', '.join(LAUNCHERS)}); "
                        "default: accelerate's own default. Precision, accumulation and clipping come from the "
                        "training config")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="processes in all, every machine's together (overrides the accelerate config)")
    p.add_argument("--main-process-port", type=int, metavar="PORT",
                   help="rendezvous port (default: the accelerate config's, else a free port on single-machine runs)")
    p.add_argument("--num-machines", type=int, metavar="N",
                   help="machines in a multi-node run (with --num-processes: the total)")
    p.add_argument("--machine-rank", type=int, metavar="R", help="this machine's rank in a multi-node run (0: head)")
    p.add_argument("--main-process-ip", metavar="IP", help="machine 0's address in a multi-node run")
    p.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is present (gloo)")
    p.add_argument("--dry-run", action="store_true", help="print the launch command and exit")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_cuda() -> bool:
    import shutil

    if shutil.which("nvidia-smi") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_launcher(name: str):
    """A launcher (accelerate config) by path, or by name from the shipped ``configs/accelerate`` from any folder."""
    from pathlib import Path

    from supirkit.cli import UserError
    from supirkit.datapipe.config import CONFIG_ROOT

    path = Path(name)
    for candidate in (path, CONFIG_ROOT / "accelerate" / path.name, CONFIG_ROOT / "accelerate" / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError(f"--launcher {name}: no such accelerate config (shipped: {', '.join(LAUNCHERS)})")


def _process_args(args, acc: dict) -> list[str]:
    """How many processes on how many machines, and the rendezvous."""
    launch: list[str] = []
    nproc = args.num_processes or int(acc.get("num_processes", 1) or 1)
    machines = args.num_machines or int(acc.get("num_machines", 1) or 1)
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    if not acc:
        launch += ["--num_processes", "1"] if not args.num_processes else []
        launch += ["--num_machines", str(machines), "--dynamo_backend", "no"]
        if nproc > 1:
            launch += ["--multi_gpu"]
    elif args.num_machines:
        launch += ["--num_machines", str(args.num_machines)]
    if args.machine_rank is not None:
        launch += ["--machine_rank", str(args.machine_rank)]
    if args.main_process_ip:
        launch += ["--main_process_ip", args.main_process_ip]
    if args.main_process_port:
        launch += ["--main_process_port", str(args.main_process_port)]
    elif nproc > 1 and machines == 1 and "main_process_port" not in acc:
        launch += ["--main_process_port", str(_free_port())]  # never collide with another run on this machine
    return launch


def _training_owned_args(cfg, acc: dict) -> list[str]:
    """What the training config owns, passed on the launch line (it overrides the launcher file, which
    therefore holds none of it): the precision, and for DeepSpeed the accumulation and the clipping."""
    sch = cfg.schedule
    launch = ["--mixed_precision", sch.mixed_precision]
    if acc.get("distributed_type") == "DEEPSPEED":
        launch += ["--gradient_accumulation_steps", str(sch.grad_accum)]
        if cfg.optim.max_grad_norm:
            launch += ["--gradient_clipping", str(cfg.optim.max_grad_norm)]
    return launch


def _script_args(args) -> list[str]:
    script = ["-m", "supirkit.train"]
    if args.config:
        script += ["--config", str(args.config)]
    else:
        script += ["--config", "train/encoder.yaml" if args.stage == "encoder" else args._default_config]
    for o in args.overrides:
        script += ["--set", o]
    for flag, value in (("--out", args.out), ("--stage", args.stage), ("--resume", args.resume),
                        ("--stop-at-step", args.stop_at_step)):
        if value is not None:
            script += [flag, str(value)]
    return script


def launch_argv(args, python: str, cfg) -> tuple[list[str], dict]:
    """(argv, extra environment) of the accelerate launch for these arguments and this training config."""
    import os

    import yaml

    launch: list[str] = []
    acc: dict = {}
    if args.launcher:
        path = resolve_launcher(args.launcher)
        acc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        launch += ["--config_file", str(path)]
    launch += _process_args(args, acc) + _training_owned_args(cfg, acc)
    env = {}
    if args.cpu or not _has_cuda():
        # `accelerate launch --cpu` starts one process only; a multi-GPU launch on CPU runs N gloo ranks.
        env["ACCELERATE_USE_CPU"] = "1"
        nproc = args.num_processes or int(acc.get("num_processes", 1) or 1)
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
        env.setdefault("OMP_NUM_THREADS", threads)
    return [python, "-m", "accelerate.commands.launch", *launch, *_script_args(args)], env


def check_inputs(cfg, resume) -> None:
    """What every process would otherwise fail on after loading, each with a traceback from the launcher:
    the output folder, the SDXL folder, the DR encoder, local shard sets and the checkpoint to resume."""
    import os

    from supirkit.cli import UserError
    from supirkit.commands._common import check_model_ref, check_output_folder

    check_output_folder(cfg.output_dir, "output_dir")
    check_model_ref("model.pretrained", cfg.model.pretrained, "model_index.json", local_only=True,
                    fetch=f"hf download stabilityai/stable-diffusion-xl-base-1.0 --local-dir {cfg.model.pretrained}")
    if cfg.model.dr_encoder and not os.path.exists(cfg.model.dr_encoder):
        raise UserError(f"model.dr_encoder {cfg.model.dr_encoder}: no such folder (train it with --stage encoder, "
                        "or set model.dr_encoder=null to start from the SDXL encoder)")
    from supirkit.datapipe.captions import CaptionSet
    from supirkit.datapipe.sources import check_protocols, is_url
    from supirkit.datapipe.tario import list_shards

    for member in cfg.data.mixture:
        specs = [member.shards] if isinstance(member.shards, str) else member.shards
        check_protocols(specs)
        for spec in specs:
            if is_url(spec):
                continue  # listed by every rank with its own credentials
            captions = CaptionSet.open(spec)
            try:
                found = [captions.shard_url(u) for u in captions.done_units()] if captions else list_shards(spec)
            except FileNotFoundError:
                found = []
            if not found:
                raise UserError(f"data.mixture {member.name!r}: {spec}: no shards found")
    if resume and resume != "latest":
        from supirkit.train.checkpoint import resolve_resume

        try:
            resolve_resume(cfg.output_dir, resume)
        except FileNotFoundError as exc:
            raise UserError(f"--resume {exc}") from None


def run(args) -> int:
    import os
    import subprocess
    import sys

    from supirkit.cli import UserError
    from supirkit.commands._common import load
    from supirkit.train.config import TrainConfig

    if args.stage == "encoder" and not args.config:
        args.config = "train/encoder.yaml"
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.stage:
        overrides.append(f"stage={args.stage}")
    saved = args.overrides
    args.overrides = overrides
    cfg = load(args, TrainConfig)  # one-line config errors before any process starts
    args.overrides = saved
    import importlib.util

    # fail here, not after every process has loaded SDXL
    backend = cfg.logging.backend
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise UserError(f"logging.backend {backend} needs the {backend} package: pip install {backend}, "
                        "or choose another backend (tensorboard, wandb, none)")
    if cfg.optim.use_8bit_adam:
        if args.cpu or not _has_cuda():
            raise UserError("optim.use_8bit_adam needs a CUDA GPU (bitsandbytes); set it to false on CPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("optim.use_8bit_adam needs bitsandbytes: pip install 'supirkit[quant]' "
                            "or set optim.use_8bit_adam=false")
    if args.resume and args.resume != "latest" and os.sep in args.resume and not os.path.isdir(args.resume):
        raise UserError(f"--resume {args.resume}: expected 'latest', a checkpoint folder or a step-N name")
    argv, env = launch_argv(args, sys.executable, cfg)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    check_inputs(cfg, args.resume)
    proc = subprocess.run(argv, env={**os.environ, **env})
    return proc.returncode
