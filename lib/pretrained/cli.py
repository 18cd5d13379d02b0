"""``python -m lib.pretrained list | info SOURCE | fetch NAME | export RUN_DIR OUT_DIR``: one line on failure."""
from __future__ import annotations

import argparse
import json
import sys

from lib.pretrained import export
from lib.pretrained.checkpoints import CHECKPOINTS, PretrainedError, PretrainedMissing, fetch, named_path
from lib.pretrained.loading import load_unet


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.pretrained", description="Pretrained checkpoints in, a trained run out (lib.pretrained).")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a named checkpoint (make fetch: python -m lib.experiment.fetch)")
    f.add_argument("name", help=f"one of: {', '.join(CHECKPOINTS)}")
    f.add_argument("--root", default=None, help="repository root to write data/ under (default: this repository)")
    sub.add_parser("list", help="the known checkpoints and whether they are in place")
    i = sub.add_parser("info", help="load a source and print the architecture it implies")
    i.add_argument("source")
    x = sub.add_parser("export", help="write a lib.train run's EMA weights as a diffusers UNet2DModel folder")
    x.add_argument("run_dir")
    x.add_argument("out_dir")
    a = p.parse_args(argv)
    if a.cmd == "export":  # the inverse mapping, checked against the run's ε
        try:
            r = export.export_run(a.run_dir, a.out_dir, load=load_unet)
        except (export.ExportError, PretrainedError) as e:
            print(f"error: cannot export: {e}", file=sys.stderr)
            return 2
        print(f"{r['out']}: diffusers UNet2DModel (config.json, diffusion_pytorch_model.safetensors, "
              f"scheduler_config.json, README.md model card), read back; max |Δε| against the run = {r['max_abs_diff']:.2e}")
        return 0
    try:
        if a.cmd == "list":
            for name in CHECKPOINTS:
                where = named_path(name)
                print(f"{name:24s} {'present' if where.exists() else 'missing'}  {where}")
        elif a.cmd == "info":
            model, cfg = load_unet(a.source)
            print(json.dumps({"config": cfg.__dict__, "norm_groups": model.norm_groups,
                              "parameters": sum(q.numel() for q in model.parameters())}, indent=2, default=list))
        else:
            print(fetch(a.name, a.root))
    except (PretrainedError, PretrainedMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
