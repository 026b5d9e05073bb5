"""`eval_after_train=true`: `replaygrpo eval` of the final model in a process of its own."""
from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from replaygrpo.config import READ_ONLY_WHEN

log = logging.getLogger("replaygrpo")

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _quote(value: str) -> str:
    """A Hydra override value taken literally (paths may hold `,`, `=`, `:` or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


def eval_after_train(run_dir: Path, out: str, overrides: list[str]) -> None:
    """`replaygrpo eval` of the run's final model in a process of its own, with the run's
    overrides (hence its eval.* settings). Its own process gets the whole GPU: the training
    engine's memory, CUDA context and vLLM's process-wide state are gone, and its vLLM engine
    is the process's only one (vLLM allows one sleep-mode engine per process)."""
    from replaygrpo.evaluate import EvalError

    # The run dir holds the trained weights: keys read only for a `toy` warm start no longer apply.
    warm_start = tuple(k for k, settings in READ_ONLY_WHEN.items() if "model.name_or_path=toy" in settings)
    replaced = ("model.name_or_path", "eval.out", "hydra.run.dir", *warm_start)
    keep = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in replaced]
    cmd = [sys.executable, "-m", "replaygrpo", "eval", *keep, f"model.name_or_path={_quote(str(run_dir))}",
           f"eval.out={_quote(out)}", f"hydra.run.dir={_quote(str(Path(out) / 'hydra'))}"]
    # A single process, whatever launched training (torchrun's rank 0 gets here alone).
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():  # what this process still caches, back to the GPU
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    log.info("evaluating the final model in a new process: %s", " ".join(cmd))
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise EvalError(f"evaluation after training (eval_after_train=true) exited with {code}; rerun it "
                        f"with: replaygrpo {shlex.join(cmd[3:])}")
