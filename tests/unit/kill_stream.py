"""A training loop's data side without the model: two epochs of batches from the training loader (two workers), a
checkpoint of the data position after every batch (written atomically, as the stage's checkpoints are), and the
fault point ``after_step`` of ``R1V_FAULT_INJECT`` (``os._exit(137)``, like ``kill -9``, loader workers alive).
Each batch's sample ids are appended to a file as they are trained on. Arguments: a data config (JSON), the
checkpoint file, the ids file. A checkpoint that exists is resumed from. Epochs start as Lightning starts them:
``set_epoch`` then the iterator, except the epoch a resume lands in, whose iterator (and so the workers' prefetch)
comes first."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from r1v.core.registry import get_registry
from r1v.data.build import build_datasets
from r1v.data.sampler import PadAware
from r1v.runtime.faults import maybe_die
from r1v.runtime.steps import DataPosition

EPOCHS = 2

if __name__ == "__main__":  # loader workers re-import this file: iterate only in the main process
    data, state_file, ids_file = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    train, _ = build_datasets({"data": data, "stage": {}}, get_registry())
    position = DataPosition(batch_size=3, seed=7)
    step, first = 0, 0
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        position.load_state_dict(state)
        step, first = state["step"], state["data_position"]["epoch"]
    loader = position.loader(PadAware(train), list, world=1, rank=0, num_workers=2)
    with ids_file.open("a") as out:
        for epoch in range(first, EPOCHS):
            if epoch == first and position.resume_at:
                batches = iter(loader)  # Lightning's order on resume: the iterator first ...
                loader.sampler.set_epoch(epoch)  # ... then the epoch
            else:
                loader.sampler.set_epoch(epoch)
                batches = iter(loader)
            position.start_epoch(epoch)
            for batch in batches:
                out.write("".join(f"{s.id}\n" for s in batch))
                out.flush()
                position.batches_done += 1
                step += 1
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({**position.state_dict(epoch), "step": step}))
                tmp.replace(state_file)
                maybe_die("after_step", step)
    os._exit(0)
