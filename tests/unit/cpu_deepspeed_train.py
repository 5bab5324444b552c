"""``python -m r1v.train`` on the CPU under a real DeepSpeed strategy (ZeRO-2/3, one gloo rank).

Lightning allows its DeepSpeed strategy on CUDA only; DeepSpeed itself runs on the CPU. This runs the real
training entry point with three strategy methods patched, so the paths that only a GPU run used to reach
(ZeRO-3 partitioned parameters inside the stages) are tested in CI. Arguments are ``r1v.train`` overrides.
"""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeed

import r1v.runtime.strategies


def _setup_environment(self: r1v.runtime.strategies.DeepSpeedStrategy) -> None:
    super(LightningDeepSpeed, self).setup_environment()  # skip Lightning's CUDA check


def _setup_distributed(self: r1v.runtime.strategies.DeepSpeedStrategy) -> None:
    self.set_world_ranks()
    self._init_deepspeed_distributed()


if __name__ == "__main__":  # reward workers re-import this file: train only in the main process
    r1v.runtime.strategies.DeepSpeedStrategy.setup_environment = _setup_environment
    r1v.runtime.strategies.DeepSpeedStrategy.setup_distributed = _setup_distributed
    r1v.runtime.strategies.DeepSpeedStrategy.root_device = property(lambda self: torch.device("cpu", 0))
    from r1v.train import main

    sys.argv = ["r1v.train", "trainer.accelerator=cpu", "trainer.devices=1",
                "+trainer.strategy.process_group_backend=gloo", *sys.argv[1:]]  # fmt: skip
    main()
