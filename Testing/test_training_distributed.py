"""Multi-process (torchrun, DDP) training: every family's training step runs inside the DDP wrapper, and a real
2-process run trains, validates and exports once."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import jsonschema
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from MedTranslateLib.families import get_family
from test_training_loop import REPO, TINY_UNET, _schema, write_pairs

SMALL_DENOISER = {"channels": [8, 16], "attention_levels": [False, False], "num_res_blocks": 1,
                  "num_head_channels": 8, "norm_num_groups": 4}


@pytest.mark.parametrize("family_name", ["unet", "pix2pix", "cyclegan", "diffusion", "contourdiff", "bridge"])
def test_every_family_trains_inside_the_multi_process_wrapper(tmp_path, family_name):
    """Under torchrun the networks are wrapped in DDP, which hides their own attributes: the diffusion families
    read ``size_divisor``/``train_timesteps``/``edge_fraction`` through it and crashed at the first step."""
    family = get_family(family_name)
    architecture = {"in_channels": 1, "out_channels": 1,
                    **(SMALL_DENOISER if family_name in ("diffusion", "contourdiff", "bridge") else TINY_UNET)}
    torch.manual_seed(0)
    nets = family.build(architecture, 2)
    optimizers = family.configure_optimizers(nets, 1e-3)
    source = torch.rand(2, 1, 32, 32) * 2 - 1
    ones = torch.ones_like(source)
    batch = {"source": source, "target": (0.5 - source).clamp(-1, 1), "mask": ones, "source_mask": ones,
             "target_mask": ones}
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        wrapped = {name: DistributedDataParallel(net, find_unused_parameters=len(nets) > 1) for name, net in nets.items()}
        losses = family.training_step(wrapped, optimizers, batch, contextlib.nullcontext, {"masked_loss": True})
    finally:
        dist.destroy_process_group()
    assert losses and all(np.isfinite(v) for v in losses.values())


@pytest.mark.slow
@pytest.mark.parametrize("family_name", ["unet", "contourdiff"])
def test_ddp_two_processes(tmp_path, family_name):
    architecture = TINY_UNET if family_name == "unet" else SMALL_DENOISER
    data = write_pairs(tmp_path / "data", n=3)
    script = tmp_path / "run_ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, torch
        torch.set_num_threads(1)
        from MedTranslateLib.training.config import TrainConfig
        from MedTranslateLib.training.loop import train
        config = TrainConfig(data={str(data)!r}, layout="paired_folder", family={family_name!r},
                             architecture={architecture!r}, steps=6, batch_size=2, val_interval=3,
                             checkpoint_interval=3, val_fraction=0.34, device="cpu",
                             output={str(tmp_path / "ddp_pkg")!r}, model_id="ddp-test")
        result = train(config)
        with open(f"result_{{os.environ['RANK']}}.json", "w") as handle:  # stdout of the ranks interleaves
            json.dump({{"package": result.package and str(result.package), "steps": result.steps}}, handle)
    """))
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(paths))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"result_{r}.json").read_text()) for r in (0, 1))
    assert rank0["package"] == str(tmp_path / "ddp_pkg") and rank1["package"] is None  # only rank 0 exports
    assert rank0["steps"] == rank1["steps"] == 6
    card = json.loads((tmp_path / "ddp_pkg" / "model.json").read_text())
    jsonschema.validate(card, _schema())
