"""A small sweep on disk, written the way train.py writes one, for the report tests (no training)."""

from __future__ import annotations

import json
from pathlib import Path

# job -> (status, top1, flops, images/s); attention has three seeds
JOBS = {
    "mixer=attention,seed=0": ("completed", 91.0, 7.0e6, 400.0),
    "mixer=attention,seed=1": ("completed", 93.0, 7.0e6, 420.0),
    "mixer=attention,seed=2": ("completed", 95.0, 7.0e6, 410.0),
    "mixer=pooling,seed=0": ("completed", 92.5, 4.0e6, 650.0),
    "mixer=identity,seed=0": ("failed", None, 3.9e6, None),
    "mixer=fnet,seed=0": ("pending", None, None, None),
}


def make_sweep(root: Path, name: str = "mixer+seed-0123abcd") -> Path:
    sweep = root / name
    jobs = []
    for num, (job, (status, top1, flops, ips)) in enumerate(JOBS.items()):
        choices = dict(part.split("=") for part in job.split(","))
        jobs.append({"job": job, "num": num, "overrides": [f"{k}={v}" for k, v in choices.items()],
                     "choices": choices, "run_dir": job, "status": status})
        if status == "pending":
            continue
        run = sweep / job
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in jobs[-1]["overrides"]))
        (run / "config.yaml").write_text(f"mixer: {choices['mixer']}\nseed: {choices['seed']}\n")
        summary = {"status": status, "mixer": choices["mixer"], "seed": int(choices["seed"]),
                   "params": 202954 if choices["mixer"] == "attention" else 186000, "flops": flops}
        rows = ["epoch,step,train/loss,val/top1"]
        if status == "completed":
            summary.update(top1=top1, top5=99.0, best_top1=top1 + 0.5, train_images_per_s=ips,
                           step_memory_mb=(50.0 if choices["mixer"] == "attention" else 20.0) + num,
                           step_memory_batch=64, process_peak_memory_mb=1583.0,
                           step_memory_method="cpu: peak of live tensor storages over one training step",
                           wall_s=30.0 + num)
            # epoch 1 logged twice, as a run killed after logging it and resumed from epoch 0 leaves it
            rows += ["0,10,2.0,50.0", "1,20,1.5,70.0", "1,20,1.4,71.0", f"2,30,1.0,{top1}"]
        else:
            summary["error"] = "NonFiniteError: non-finite loss (nan) at step 12 (epoch 1, batch 2)"
            rows += ["0,10,2.2,40.0"]
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    index = {"name": name, "dir": str(sweep), "varied": ["mixer", "seed"], "jobs": jobs}
    (sweep / "sweep.json").write_text(json.dumps(index))
    return sweep


def make_seed_sweep(root: Path, name: str, seed: int, runs: dict[str, tuple[float, float]]) -> Path:
    """A sweep over mixers at one seed, as ``train.py -m seed=S mixer=a,b`` writes it: each run's resolved
    config names the seed twice (``seed`` and ``data.seed``), its own directory and, in its wandb logger's
    group and name, the sweep and the job. ``runs``: mixer -> (top1, recipe lr)."""
    sweep = root / name
    jobs = []
    for num, (mixer, (top1, lr)) in enumerate(runs.items()):
        job = f"mixer={mixer}"
        run = sweep / job
        run.mkdir(parents=True)
        jobs.append({"job": job, "num": num, "overrides": [job, f"seed={seed}"], "choices": {"mixer": mixer},
                     "run_dir": job, "status": "completed"})
        (run / "config.yaml").write_text(
            f"seed: {seed}\nmixer:\n  name: {mixer}\ndata:\n  seed: {seed}\n  val_seed: 0\n"
            f"recipe:\n  lr: {lr}\ntrainer:\n  default_root_dir: {run}\n  callbacks:\n"
            f"  - dirpath: {run}/checkpoints\nsweep:\n  name: {name}\n"
            f"logger:\n  wandb:\n    group: {name}\n    name: {job},seed={seed}\n    save_dir: {run}\n")
        (run / "summary.json").write_text(json.dumps({
            "status": "completed", "mixer": mixer, "seed": seed, "params": 1000, "flops": 2.0e6,
            "top1": top1, "wall_s": 10.0}))
    (sweep / "sweep.json").write_text(json.dumps({"name": name, "dir": str(sweep), "varied": ["mixer"],
                                                  "jobs": jobs}))
    return sweep


# Two tasks, five mixers, several seeds (top-1 %), for the statistics section. odd_one_out (chance 10%):
# spectral is far ahead of attention; pooling sits just above identity (uncorrected p < 0.05, not
# separated once Holm-Bonferroni counts the task's ten pairs); nystrom learns on two seeds of four.
# same_different (2 classes, chance 50%): attention and spectral overlap.
TASK_SEEDS = {
    ("odd_one_out", 10): {
        "identity": [10.1, 9.9, 10.3, 10.0],
        "pooling": [10.5, 10.9, 10.3, 10.8],
        "attention": [60.0, 62.0, 61.0, 63.0],
        "spectral": [90.0, 92.0, 91.0, 93.0],
        "nystrom": [10.2, 70.1, 10.4, 69.8],
    },
    ("same_different", 2): {
        "identity": [50.2, 49.8, 50.1],
        "pooling": [52.0, 53.0, 52.5],
        "attention": [70.0, 75.0, 80.0],
        "spectral": [72.0, 78.0, 74.0],
    },
}


def make_task_sweep(root: Path, task: str, num_classes: int, seeds: dict[str, list[float]]) -> Path:
    """``train.py -m experiment=proxy_<task> mixer=... seed=0,1,..`` as it lands on disk: each run's
    resolved config names its data module, task and classes; the identity mixer's file sets the GAP head."""
    name = f"{task}-mixer+seed"
    sweep = root / name
    jobs = []
    for mixer, values in seeds.items():
        for seed, top1 in enumerate(values):
            job = f"mixer={mixer},seed={seed}"
            run = sweep / job
            run.mkdir(parents=True)
            jobs.append({"job": job, "num": len(jobs), "choices": {"mixer": mixer, "seed": str(seed)},
                         "overrides": [f"experiment=proxy_{task}", f"mixer={mixer}", f"seed={seed}"],
                         "run_dir": job, "status": "completed"})
            (run / "config.yaml").write_text(
                f"seed: {seed}\nname: proxy_{task}\nmixer:\n  _target_: mixers.{mixer}.Mixer\n"
                f"backbone:\n  head: {'gap' if mixer == 'identity' else 'cls'}\n"
                f"data:\n  _target_: data.digit_tasks.DigitTasksDataModule\n  task: {task}\n"
                f"  num_classes: {num_classes}\n  seed: {seed}\n"
                f"trainer:\n  max_epochs: {12 if task == 'same_different' else 6}\n")
            (run / "summary.json").write_text(json.dumps({
                "status": "completed", "mixer": mixer, "seed": seed, "params": 1000, "flops": 2.0e6,
                "top1": top1, "train_images_per_s": 500.0, "wall_s": 10.0}))
    index = {"name": name, "dir": str(sweep), "varied": ["mixer", "seed"], "jobs": jobs}
    (sweep / "sweep.json").write_text(json.dumps(index))
    return sweep
