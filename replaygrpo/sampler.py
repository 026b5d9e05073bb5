"""Prompt order: a seeded permutation per epoch, with a position that a checkpoint can store."""
from __future__ import annotations

import numpy as np


class PromptSampler:
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self, k: int) -> list[int]:
        """The next k problem indices; an epoch boundary reshuffles, never repeats within a draw."""
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            take = min(k - len(out), self.n - self.pos)
            out.extend(int(i) for i in self._perm[self.pos:self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.n, self.seed, self.epoch, self.pos = state["n"], state["seed"], state["epoch"], state["pos"]
        self._perm = self._permutation(self.epoch)
