"""Real DeepSpeed ZeRO-3 partitioning on the CPU (one gloo rank, in a subprocess): the pieces of r1v that
touch partitioned parameters: the adapter reference swap, the fp32 rotary fix and ``decode_ready`` (hooks
lifted for rollouts) on a real ZeRO-3 engine. The same code on 2 H200s: tests/gpu/test_grpo_zero.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed")

SCRIPT = textwrap.dedent("""
    import os, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.distributed.init_process_group("gloo")
    import deepspeed
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
    from r1v.rl.grpo import AdapterReference
    from r1v.runtime.weights import fp32_rotary, gathered, zero3_active

    cfg = {"train_batch_size": 1, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
           "bf16": {"enabled": True}}
    rope = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    exact = Qwen2RotaryEmbedding(rope).inv_freq
    with deepspeed.zero.Init(config_dict_or_path=cfg, dtype=torch.bfloat16):
        assert zero3_active()
        r = Qwen2RotaryEmbedding(rope)
        assert r.inv_freq.dtype == torch.bfloat16  # what zero.Init does to the buffer
        assert fp32_rotary(r) == 1 and torch.equal(r.inv_freq, exact)
        assert torch.empty(1).dtype == torch.bfloat16  # DeepSpeed's patches are back after the fix
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    p = model[1].weight
    assert p.numel() == 0  # partitioned: .data is a placeholder
    with gathered(model, modifier_rank=0), torch.no_grad():
        for q in model.parameters():
            q.copy_(torch.arange(q.numel(), dtype=torch.float).view_as(q) / 10)
    with gathered(model):
        initial = model[1].weight.detach().clone()
    ref = AdapterReference(model, ["1.weight", "1.bias"])
    with gathered([p], modifier_rank=0), torch.no_grad():
        p.add_(1.0)  # the policy moves
    with ref.active():
        with gathered(model):
            assert torch.equal(model[1].weight, initial), "reference not swapped in"
    with gathered(model):
        assert torch.equal(model[1].weight, initial + 1.0), "policy not restored"

    # decode_ready on a real ZeRO-3 engine: no per-module hooks inside, the same outputs, hooks back after
    from r1v.runtime.weights import decode_ready, zero3_offload
    ds = {"train_batch_size": 1, "zero_allow_untested_optimizer": True, "zero_optimization": cfg["zero_optimization"]}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), config=ds)
    off = zero3_offload(engine)
    hooks = (len(off.forward_hooks), len(off.backward_hooks))
    assert min(hooks) > 0
    x = torch.randn(3, 4)
    y0 = engine(x)
    with decode_ready(engine.module, engine):
        assert (len(off.forward_hooks), len(off.backward_hooks)) == (0, 0)
        assert net[0].weight.shape == (8, 4)  # gathered once for the block
        y1 = net(x)
    assert (len(off.forward_hooks), len(off.backward_hooks)) == hooks and net[0].weight.numel() == 0
    assert torch.allclose(y0, y1)
    loss = engine(x).sum()
    engine.backward(loss)
    engine.step()
    assert float(engine(x).sum()) < float(loss)  # and training goes on with the hooks re-registered
    assert zero3_offload(None) is None

    # rollout=static on ZeRO-3-partitioned weights: inside decode_ready it reads the gathered tensors and
    # decodes greedily exactly what transformers' generate does; twice (new storage every gather)
    from transformers import Qwen2ForCausalLM
    from r1v.generation import StaticEngine
    lm_cfg = Qwen2Config(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        lm = Qwen2ForCausalLM(lm_cfg)
    fp32_rotary(lm)
    lm_engine, *_ = deepspeed.initialize(model=lm, optimizer=torch.optim.SGD(lm.parameters(), lr=0.1), config=ds)
    ids = torch.randint(3, 61, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :2] = 0
    static = StaticEngine()
    for _ in range(2):
        with decode_ready(lm_engine.module, lm_engine), torch.no_grad():
            ref = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[:, 7:].tolist()
            knobs = {"temperature": [1.0] * 3, "top_p": [1.0] * 3, "repetition_penalty": [1.0] * 3}
            mine = static.decode(lm, lm.model.embed_tokens(ids), mask, 12, True, knobs, eos=None, pad=0)
        assert mine == ref, (mine, ref)
        assert lm.model.layers[0].mlp.up_proj.weight.numel() == 0  # partitioned again

    # gather="layer" (a model whose gathered copy does not fit): nothing gathered up front, the hooks stay and
    # fetch each module as transformers' generate reaches it; the same tokens, never the whole model at once
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from r1v.runtime.weights import gather_mode, gathered_bytes
    assert gather_mode(lm, lm_engine, "auto") == "whole"  # off the GPU there is nothing to choose
    assert gather_mode(lm, None, "layer") == "whole" and gather_mode(lm, lm_engine, "layer") == "layer"
    assert gathered_bytes(lm) == 0  # one rank: its shard is the whole parameter
    params = list(lm.parameters())
    available = []
    count = lambda mod, args: available.append(sum(p.ds_status == ZeroParamStatus.AVAILABLE for p in params))
    hooks = [layer.register_forward_pre_hook(count) for layer in lm.model.layers]
    with decode_ready(lm_engine.module, lm_engine, gather="layer"), torch.no_grad():
        assert len(zero3_offload(lm_engine).forward_hooks) > 0  # the per-module hooks stay live
        layered = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[:, 7:].tolist()
    for h in hooks:
        h.remove()
    assert layered == ref, (layered, ref)
    assert available and max(available) < len(params), (max(available), len(params))
    print("OK")
""")


def test_zero3_partitions_on_cpu(tmp_path):
    import random

    env = {**__import__("os").environ, "PORT": str(random.randint(20000, 40000)), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_gather_mode_chooses_by_free_memory(monkeypatch):
    """``auto`` gathers the whole model when its missing part plus the reserve fits in 90% of the free GPU
    memory, else layer by layer; a rank counts only what its shard lacks (padded shards count nothing)."""
    from types import SimpleNamespace

    import torch

    from r1v.runtime import weights

    def param(numel: int, shard: int) -> SimpleNamespace:
        return SimpleNamespace(ds_id=1, ds_numel=numel, ds_tensor=torch.empty(shard), element_size=lambda: 2,
                               device=torch.device("cuda"))  # fmt: skip

    model = SimpleNamespace(parameters=lambda: [param(1000, 250), param(10, 16), SimpleNamespace(device=None)])
    assert weights.gathered_bytes(model) == 750 * 2  # 3/4 of the first; the padded second adds nothing
    monkeypatch.setattr(weights, "zero3_offload", lambda engine: engine)
    free = {"bytes": 10_000}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 10**9))
    assert weights.gather_mode(model, "zero3", "auto", reserve_bytes=7_000) == "whole"  # 8,500 ≤ 9,000
    assert weights.gather_mode(model, "zero3", "auto", reserve_bytes=8_000) == "layer"  # 9,500 > 9,000
    assert weights.gather_mode(model, "zero3", "whole", reserve_bytes=10**9) == "whole"  # as asked
    assert weights.gather_mode(model, None, "layer") == "whole"  # not ZeRO-3: nothing to gather
    with pytest.raises(ValueError, match="rollout gather 'half' is not one of auto, whole, layer"):
        weights.gather_mode(model, "zero3", "half")


SWAP = textwrap.dedent("""
    import os, torch
    torch.distributed.init_process_group("gloo")
    import deepspeed
    from r1v.rl.grpo import AdapterReference

    # threshold 10: the 8-wide biases and norm stay whole on every rank (persistent), the matrices are split
    ds = {"train_batch_size": 2, "zero_allow_untested_optimizer": True,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10}}
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds):
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.5), config=ds)
    assert any(p.ds_persist for p in net.parameters()) and not all(p.ds_persist for p in net.parameters())
    x = torch.randn(5, 4)
    ref = AdapterReference(net, [n for n, _ in net.named_parameters()])
    with torch.no_grad():
        y0 = engine(x)
    loss = engine(x).pow(2).sum()
    engine.backward(loss)
    engine.step()  # the policy moves
    with torch.no_grad():
        y1 = engine(x)
        assert not torch.allclose(y0, y1)
        gathered = []  # what the swap itself gathers: persistent (small) parameters at most, never the matrices
        real = deepspeed.zero.GatheredParameters
        deepspeed.zero.GatheredParameters = lambda ps, *a, **k: (gathered.extend(ps), real(ps, *a, **k))[1]
        with ref.active():
            deepspeed.zero.GatheredParameters = real
            assert all(p.ds_persist for p in gathered), [tuple(p.ds_shape) for p in gathered]
            assert torch.equal(engine(x), y0), "reference not swapped in"
        assert torch.equal(engine(x), y1), "policy not restored"

    # gathered(modifier_rank=0) on a live engine: persistent parameters (whole on every rank after a forward)
    # take rank 0's values on every rank, in their whole value and in each rank's shard
    from r1v.runtime.weights import gathered
    rank = torch.distributed.get_rank()
    assert any(p.ds_persist and p.numel() > 0 for p in net.parameters())  # whole right now
    with gathered(net, modifier_rank=0), torch.no_grad():
        if rank == 0:
            for p in net.parameters():
                p.fill_(0.25)
    with gathered(net), torch.no_grad():
        assert all(torch.all(p == 0.25) for p in net.parameters()), rank
    for p in net.parameters():
        n = max(0, min(p.ds_tensor.numel(), p.ds_numel - rank * p.ds_tensor.numel()))
        assert torch.all(p.ds_tensor[:n] == 0.25), (rank, tuple(p.ds_shape))
    # both ranks done before either tears gloo down: a rank leaving with the group alive aborts the process
    # ("terminate called without an active exception") while the other still talks to it
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    print("OK", rank, flush=True)
""")


def test_reference_swap_on_two_ranks_moves_only_each_ranks_partitions(tmp_path):
    """The ZeRO-3 reference swap works on each rank's own partitions (no whole-model gather): on 2 gloo ranks,
    after a real optimizer step the swapped-in model computes exactly the initial outputs, and the policy's
    outputs come back after; partitioned and persistent (whole on every rank) parameters alike. Then
    ``gathered(modifier_rank=0)`` on the live engine gives every rank rank 0's values, persistent ones included."""
    import os
    import socket

    with socket.socket() as s:  # a port free now, not a random one that another test may hold
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [subprocess.Popen([sys.executable, "-c", SWAP], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r),
                                   "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
             for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and "OK" in out, (p.returncode, out[-500:], err[-3000:])
