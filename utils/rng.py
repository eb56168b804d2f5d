"""Seeding and the random-number state that a checkpoint carries, so a resumed run draws the same numbers.

States are stored as tensors and plain Python values only, so `torch.load(weights_only=True)` reads them.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from the config's `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The state of every generator the training loop may draw from."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` saved; generators of devices this machine lacks are reported, not faked."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(state["torch"])
    saved_cuda = state.get("cuda", [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(saved_cuda[:here]):
        torch.cuda.set_rng_state(cuda_state, index)
    if saved_cuda and len(saved_cuda) != here:
        log.warning("The checkpoint holds RNG states for %d CUDA device(s), this machine has %d: "
                    "restored %d; random draws made on the missing devices (e.g. GPU dropout) "
                    "will differ from the original run.", len(saved_cuda), here, min(here, len(saved_cuda)))
    if "mps" in state:
        if torch.backends.mps.is_available():
            torch.mps.set_rng_state(state["mps"])
        else:
            log.warning("The checkpoint holds an MPS RNG state but MPS is not available here; it is not restored.")


def _as_tuple(value: Any) -> Any:
    """`random.setstate` wants nested tuples; a checkpoint round trip may turn them into lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
