"""Shared fixtures. (Helper modules such as media_factory and hub_server are imported by name: tests/ has no
__init__.py, so pytest puts it on sys.path.)"""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module: with the machine's 2 cores shared (by subprocesses, or other jobs),
    OpenMP threads spinning against each other make a tiny model's step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
