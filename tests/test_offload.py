"""fsdp.offload_optimizer: AdamW's moments leave the device between steps and come back unchanged."""
from __future__ import annotations

import json
import subprocess

import torch

from replaygrpo.offload import free_gradients_after_step, offload_optimizer, resident
from tests.test_resume import comparable, env, train_cmd


def moments(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for st in opt.state.values() for k, t in st.items() if k != "step"]


def test_steps_are_unchanged_and_the_state_is_freed_between_them():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    offload_optimizer(ob)
    for i in range(4):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(i))
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
        assert all(t.untyped_storage().size() == 0 for t in moments(ob)), "offloaded after the step"
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with resident(ob):  # what a checkpoint reads
        assert all(torch.equal(s, t) for s, t in zip(moments(oa), moments(ob)))
        state = ob.state_dict()
    assert all(t.untyped_storage().size() == 0 for t in moments(ob))
    ob.load_state_dict(state)  # new tensors (a resume): offloaded at the next step, still exact
    x = torch.randn(5, 8)
    for model, opt in ((a, oa), (b, ob)):
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(t.untyped_storage().size() == 0 for t in moments(ob))


def test_a_run_with_offload_checkpoints_and_resumes_to_the_same_metrics(tmp_path):
    full, off = tmp_path / "full", tmp_path / "off"
    subprocess.run(train_cmd(full, steps=4), check=True, env=env(), capture_output=True)
    out = subprocess.run(train_cmd(off, "fsdp.offload_optimizer=true", steps=3), env=env(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    # Resume from the step-2 checkpoint (saved under offload), again with offload.
    out = subprocess.run(train_cmd(off, "fsdp.offload_optimizer=true", "resume=auto", steps=4), env=env(),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert comparable(off) == comparable(full)
    assert json.loads((off / "summary.json").read_text())["steps"] == 4


def test_gradients_are_freed_by_the_step():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    free_gradients_after_step(opt)
    model(torch.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert all(p.grad is None for p in model.parameters()) and opt.state  # stepped, then freed
