"""torchrun + FSDP2 on CPU (gloo): two processes take the single-process update, and train end to end.

The update test builds a fixed batch of rollouts (varied lengths, advantages, ages and
stored log-probs), splits it unevenly over two ranks with a small token budget (so the
ranks have different micro-batch counts and one runs idle passes), and checks that the
loss, the gradient norm and every parameter's change equal the single-process update of
the whole batch. SGD, not Adam, so a gradient off by a factor (say, averaged over ranks
instead of summed) shows in the parameters.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

CASES = {  # name: (update_step keywords, ranks' shares of the 10 rollouts)
    "token_mean_clip_kl": (dict(agg="token_mean", grad_clip=0.05, kl_coef=0.1, layout="packed"), (6, 4)),
    # Rank 0's two rollouts have advantage 0: it skips both and runs idle passes only.
    "seq_mean_token_sum": (dict(agg="seq_mean_token_sum", grad_clip=0.0, kl_coef=0.0), (2, 8)),
    # Under FSDP2: gradient checkpointing (re-forward in backward), and bf16 autocast compute
    # (float32 shards; the single process in bf16 too, so the tolerance only covers the
    # different batch shapes' rounding).
    "grad_ckpt": (dict(agg="token_mean", grad_clip=0.5, kl_coef=0.0, layout="padded", grad_ckpt=True), (5, 5)),
    "bf16_autocast": (dict(agg="token_mean", grad_clip=0.0, kl_coef=0.0, layout="packed", bf16=True, tol=2e-2),
                      (7, 3)),
    # FSDP2 MixedPrecisionPolicy: bf16 all-gathers and compute, float32 gradient reduction,
    # against today's single process (bf16 autocast over float32 weights).
    "bf16_mixed_precision": (dict(agg="token_mean", grad_clip=0.0, kl_coef=0.0, layout="packed", bf16=True,
                                  mp=True, tol=2e-2), (7, 3)),
}
NUM_FRESH = 6
BUDGET = 24  # tokens per micro-batch: small, so micro-batch counts differ between the ranks


def tiny_model(kl: bool, grad_ckpt: bool = False):
    from replaygrpo.config import Config
    from replaygrpo.toymodel import build_model

    cfg = Config()
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.intermediate_size = 32, 2, 64
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=50, eos_id=0)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    ref = None
    if kl:
        ref = build_model(cfg, vocab_size=50, eos_id=0).requires_grad_(False)  # another init: KL != 0
    return model, ref


def fixed_batch():
    """10 rollouts: 6 fresh then 4 replayed (ages 1-2, stored log-probs that make ratios != 1)."""
    from replaygrpo.records import Rollout

    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(10):
        p, c = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        out.append(Rollout(
            prompt_ids=torch.randint(1, 50, (p,), generator=g, dtype=torch.int32),
            completion_ids=torch.randint(1, 50, (c,), generator=g, dtype=torch.int32),
            old_logprobs=-4.0 + 0.5 * torch.randn(c, generator=g), reward=float(i % 2),
            advantage=float(torch.randn(1, generator=g)) if i >= 2 else 0.0, birth_step=0, prompt_id=i, group_id=i // 2))
    ages = [0] * NUM_FRESH + [1, 2, 1, 2]
    return out, ages


def run_update(model, ref, rollouts, ages, num_fresh, kw):
    from replaygrpo.records import UpdateBatch
    from replaygrpo.update import UpdateOptions, update_step

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opts = UpdateOptions(
        pad_id=0, temperature=1.0, clip_low=0.2, clip_high=0.2, agg=kw["agg"], old_logprobs="trainer", tis_cap=None,
        token_budget=BUDGET, grad_clip=kw["grad_clip"], kl_coef=kw["kl_coef"], layout=kw.get("layout", "auto"),
        autocast_dtype=torch.bfloat16 if kw.get("bf16") else None)
    return update_step(model, opt, UpdateBatch(rollouts, num_fresh), opts, ref)


def worker(out_dir: Path) -> None:
    """Run under torchrun: each rank updates on its share of the batch; rank 0 saves the result."""
    from torch.distributed.tensor import DTensor

    from replaygrpo import distributed
    from replaygrpo.rollout.hf import HFEngine
    from replaygrpo.records import SamplingParams

    distributed.init(torch.device("cpu"))
    rank = distributed.rank()
    # Generation: ranks generate different numbers of tokens, first before any sharded
    # forward (FSDP's lazy init) and again after a training step. The engine holds the whole
    # parameters (distributed.full_params) through every token's forward, so no forward
    # all-gathers (ranks making different numbers of forwards would otherwise hang); they
    # are sharded again afterwards.
    model, _ = tiny_model(kl=False)
    distributed.shard(model, torch.device("cpu"))
    generated, whole = [], []
    for again in (False, True):
        if again:
            run_update(model, None, *fixed_batch(), NUM_FRESH, CASES["seq_mean_token_sum"][0])
        # The trainer's sampling loop; no stop token, so rank r makes 2 + 9r forwards.
        engine = HFEngine(model, eos_token_id=-1, pad_token_id=0)
        n = 2 + 9 * rank
        out = engine.generate([[1, 2, 3]], SamplingParams(n=2, temperature=1.0, max_new_tokens=n, seed=rank))
        whole.append(all(isinstance(p, DTensor) for p in model.parameters()))
        generated.append(out[0][0].token_ids.numel())
    generated = distributed.gather((generated, whole))
    rollouts, ages = fixed_batch()
    for name, (kw, shares) in CASES.items():
        model, ref = tiny_model(kl=kw["kl_coef"] > 0, grad_ckpt=kw.get("grad_ckpt", False))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        distributed.shard(model, torch.device("cpu"), param_dtype=torch.bfloat16 if kw.get("mp") else None)
        if ref is not None:
            distributed.shard(ref, torch.device("cpu"))
        gathered = []  # the dtype a layer's parameters are all-gathered in, seen by its forward
        layer = model.model.layers[0]
        hook = layer.register_forward_pre_hook(lambda m, a: gathered.append(m.mlp.up_proj.weight.dtype))
        # Rank r takes a contiguous slice: its fresh rollouts come first (update_step's contract).
        mine = range(sum(shares[:rank]), sum(shares[:rank + 1]))
        rs, ag = [rollouts[i] for i in mine], [ages[i] for i in mine]
        mine_fresh = sum(i < NUM_FRESH for i in mine)
        result = run_update(model, ref, rs, ag, mine_fresh, kw)
        hook.remove()
        loss = sum(distributed.gather(result.loss))
        idle = distributed.gather(result.idle_passes)
        after = distributed.full_model_state(model)
        if rank == 0:
            delta = {k: after[k] - before[k] for k in before}
            torch.save({"loss": loss, "grad_norm": result.grad_norm, "delta": delta, "idle": idle,
                        "generated": generated, "gathered": str(gathered[0]),
                        "shard_dtype": str(next(iter(after.values())).dtype)},
                       out_dir / f"{name}.pt")
    distributed.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def torchrun_cmd(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]


def torchrun(*args: str, nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(*args, nproc=nproc), cwd=REPO, env=torchrun_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_two_processes_take_the_single_process_update(tmp_path):
    out = torchrun(__file__, str(tmp_path))
    assert out.returncode == 0, out.stderr[-4000:]
    rollouts, ages = fixed_batch()
    for name, (kw, _) in CASES.items():
        model, ref = tiny_model(kl=kw["kl_coef"] > 0, grad_ckpt=kw.get("grad_ckpt", False))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        single = run_update(model, ref, rollouts, ages, NUM_FRESH, kw)
        dist = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        tol = kw.get("tol", 1e-5)
        print(f"{name}: relative difference from one process: loss {abs(dist['loss'] - single.loss) / abs(single.loss):.2g}, "
              f"grad norm {abs(dist['grad_norm'] - single.grad_norm) / single.grad_norm:.2g}")  # pytest -s shows it
        assert dist["loss"] == pytest.approx(single.loss, rel=tol), name
        assert dist["grad_norm"] == pytest.approx(single.grad_norm, rel=tol), name
        for k, v in model.state_dict().items():
            torch.testing.assert_close(dist["delta"][k], v - before[k], rtol=10 * tol, atol=1e-7 if tol < 1e-4
                                       else tol * float((v - before[k]).abs().max()), msg=f"{name}: {k}")
        assert single.grad_norm > (kw["grad_clip"] or 0), "the clip case must actually clip"
        # Mixed precision gathers bf16 (half the bytes of float32) into float32 shards.
        assert dist["gathered"] == ("torch.bfloat16" if kw.get("mp") else "torch.float32"), name
        assert dist["shard_dtype"] == "torch.float32", name
    # Rank 0 held only zero-advantage rollouts: it ran idle passes only, matching rank 1's count.
    assert torch.load(tmp_path / "seq_mean_token_sum.pt", weights_only=True)["idle"][0] > 0
    generated = torch.load(tmp_path / "seq_mean_token_sum.pt", weights_only=True)["generated"]
    assert generated == [([2, 2], [True] * 2), ([11, 11], [True] * 2)]


def train_args(run_dir: Path, *extra: str) -> list[str]:
    from tests.conftest import toy_overrides

    overrides = [o for o in toy_overrides() if not o.startswith(("trainer.steps=", "trainer.eval_size="))]
    return ["-m", "replaygrpo", "train", *overrides, f"hydra.run.dir={run_dir}", "trainer.steps=3",
            "trainer.eval_size=33",  # not a multiple of 2: the eval's padding is dropped again
            "method=replay", "replay.tau_max=1", "checkpoint.every=1", *extra]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_torchrun_trains_replay_end_to_end_and_resumes_exactly(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    out = torchrun(*train_args(full))
    assert out.returncode == 0, out.stderr[-4000:]
    rows = metrics(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # global figures: 4 prompts x 4 completions over both ranks
        assert r["batch/n_fresh"] == 16 and r["replay/age_max"] <= 1
        assert sum(r["replay/age_hist"]) == r["batch/n_fresh"] + r["batch/n_replay"]
        assert r["batch/n_replay"] <= r["batch/n_fresh"]
        assert r["loss/ratio_mean_by_age"][0] == pytest.approx(1.0, abs=1e-6)  # fresh: the weights that made them
    assert rows[0]["batch/n_replay"] == 0 and any(r["batch/n_replay"] > 0 for r in rows[1:])
    assert rows[-1]["rollouts/generated"] == 48
    assert (full / "final_model" / "model.safetensors").is_file() and (full / "summary.json").is_file()
    summary = json.loads((full / "summary.json").read_text())
    for acc in (summary["start_accuracy"], summary["final_accuracy"]):
        assert acc * 33 == pytest.approx(round(acc * 33), abs=1e-9)  # of the 33 problems, not 34
    ckpt = full / "checkpoints" / "step-00000001"
    files = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    # Sharded: each rank wrote its own DCP shard; nothing was gathered into a full state.
    assert {"buffer_rank0.safetensors", "buffer_rank1.safetensors", "shards/.metadata"} <= files
    assert len([f for f in files if f.startswith("shards/") and f.endswith(".distcp")]) == 2
    assert "model.safetensors" not in files
    assert set(json.loads((ckpt / "manifest.json").read_text())) == files - {"manifest.json"}

    # Both ranks SIGKILLed once checkpoint 1 is in place; resume=auto gives the same metrics and weights.
    # This run keeps AdamW's (sharded) moments in host memory between steps: values unchanged.
    proc = subprocess.Popen(torchrun_cmd(*train_args(killed, "fsdp.offload_optimizer=true")), cwd=REPO, env=torchrun_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step-00000001").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final_model").exists(), "the run finished before it could be killed"
    out = torchrun(*train_args(killed, "resume=auto", "fsdp.offload_optimizer=true"))
    assert out.returncode == 0, out.stderr[-4000:]
    assert "resumed from" in out.stdout + out.stderr
    assert metrics(killed) == rows
    a = load_file(full / "final_model" / "model.safetensors")
    b = load_file(killed / "final_model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # One process cannot take over two ranks' non-empty buffers: a clear error, no traceback.
    from typer.testing import CliRunner

    from replaygrpo.cli import app

    out = CliRunner().invoke(app, ["train", *train_args(killed, "resume=auto")[3:]])
    assert out.exit_code == 2 and "2 process(es)" in out.output and "replay buffer" in out.output, out.output
    assert "Traceback" not in out.output


def test_a_sharded_checkpoint_without_buffers_resumes_on_one_process(tmp_path):
    run = tmp_path / "run"
    out = torchrun(*train_args(run, "method=grpo"))
    assert out.returncode == 0, out.stderr[-4000:]
    from typer.testing import CliRunner

    from replaygrpo.checkpoint import list_checkpoints
    from replaygrpo.cli import app

    shutil.rmtree(list_checkpoints(run)[-1])  # resume from step 1
    args = train_args(run, "method=grpo", "resume=auto", "trainer.steps=4")[3:]
    out = CliRunner().invoke(app, ["train", *args])
    assert out.exit_code == 0, out.output
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]


def test_prompts_per_step_must_divide_by_world_size(monkeypatch):
    from replaygrpo.config import Config, ConfigError
    from replaygrpo.validation import validate

    monkeypatch.setenv("WORLD_SIZE", "3")
    cfg = Config()
    cfg.trainer.prompts_per_step = 4
    with pytest.raises(ConfigError, match="trainer.prompts_per_step"):
        validate(cfg)
    cfg.trainer.prompts_per_step = 6
    validate(cfg)


@pytest.mark.parametrize("world, engine, tp, ok", [
    (1, "vllm", 1, True), (4, "vllm", 2, True), (4, "vllm", 4, True),
    (1, "vllm", 2, False),  # tensor parallel ranks are torchrun's ranks
    (4, "vllm", 3, False), (4, "hf", 2, False), (4, "vllm", 0, False)])
def test_engine_tensor_parallel_size_must_tile_the_ranks(monkeypatch, world, engine, tp, ok):
    from replaygrpo.config import Config, ConfigError
    from replaygrpo.variants import load_config

    monkeypatch.setenv("WORLD_SIZE", str(world))
    cfg = Config()
    cfg.trainer.prompts_per_step = 4
    cfg.engine.name, cfg.engine.tensor_parallel_size = engine, tp
    if ok:
        load_config(cfg)
    else:
        with pytest.raises(ConfigError, match="engine.tensor_parallel_size"):
            load_config(cfg)


def test_micro_batch_count_is_padded_by_splitting_then_idle_passes():
    from replaygrpo.distributed import same_micro_batch_count

    lengths = [3, 5, 9]
    plan = same_micro_batch_count([[0, 1, 2]], lengths, 2)
    assert plan == [[0], [1, 2]]  # the largest micro-batch split, within the budget it came with
    plan = same_micro_batch_count([[0, 1], [2]], lengths, 5)
    assert sorted(i for mb in plan for i in mb) == [0, 1, 2] and len(plan) == 5
    assert sum(1 for mb in plan if not mb) == 2  # three rollouts: two idle passes


if __name__ == "__main__":
    worker(Path(sys.argv[1]))


def test_the_post_sync_check_sees_any_ranks_nan():
    from replaygrpo.rollout.vllm_engine import worst_gap  # vLLM itself is imported only by the engine

    assert worst_gap([1e-6, 3e-6]) == 3e-6
    assert math.isnan(worst_gap([1e-6, math.nan])) and math.isnan(worst_gap([math.nan, 1e-6]))
    assert not worst_gap([1e-6, math.nan]) <= 0.5  # so the engine's check raises on every rank
