"""Build several organisms in parallel on one GPU, measure each, and pack the best one.

    python -m sectensor.organism.sweep --work /tmp/sweep --out OUTDIR --variants prefix prefix_distill --seeds 0 1 2

Each (variant, seed) runs `build` then `measure` in its own process (the models are small, so one GPU holds many).
Builds are ranked by `measure.score` (requirement shortfalls first, then δv's transfer to unseen groups); the
best checkpoint is packed as ``organism.tar`` split into 15 MiB parts, next to every report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=["prefix"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--deadline", type=float, default=520, help="seconds before unfinished runs are abandoned")
    parser.add_argument("--build-args", default="", help="extra arguments for build, e.g. '--mixed-steps 2000'")
    parser.add_argument("--measure-args", default="")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    procs = {}
    for variant in args.variants:
        for seed in args.seeds:
            name = f"{variant}_s{seed}"
            model = args.work / name
            cmd = (f"{sys.executable} -m sectensor.organism.build --out {model} --seed {seed} --variant {variant} "
                   f"--device cuda {args.build_args} && {sys.executable} -m sectensor.organism.measure --model {model} "
                   f"--device cuda --out {model}.json {args.measure_args}")
            log = open(args.work / f"{name}.log", "w")
            procs[name] = subprocess.Popen(cmd, shell=True, stdout=log, stderr=subprocess.STDOUT)
    while any(p.poll() is None for p in procs.values()) and time.time() - start < args.deadline:
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            p.kill()
            p.wait()
            print(f"{name}: abandoned at the deadline")
    reports = {}
    for name in procs:
        report: dict = {}
        path = args.work / f"{name}.json"
        if path.exists():
            report = json.loads(path.read_text())
            report["build_info"] = json.loads((args.work / name / "build_info.json").read_text())
            report["finished"] = procs[name].returncode == 0
            print(f"{name}: score {report['score']}  seconds {report['build_info']['seconds_per_stage']}")
        else:
            print(f"{name}: no report")
        log = args.work / f"{name}.log"
        if log.exists():
            report["log_tail"] = log.read_text().splitlines()[-40:]
        reports[name] = report
    (args.out / "reports.json").write_text(json.dumps(reports, indent=1) + "\n")
    if not reports:
        return
    scored = [name for name in reports if "score" in reports[name]]
    built = [name for name in procs if (args.work / name / "model.safetensors").exists()]
    if not built:
        return
    # Prefer the best measured build; without any measurement, the first finished build.
    best = max(scored, key=lambda name: reports[name]["score"]) if scored else built[0]
    print(f"best: {best}")
    tar_path = args.work / "organism.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(args.work / best, arcname=best)
    subprocess.run(["split", "-b", "15M", "-d", str(tar_path), str(args.out / "organism.tar.part")], check=True)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
