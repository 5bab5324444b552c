"""GPU tests: a test that kills the CUDA context (a device-side assert) fails alone; the tests after it in the
same process are reported as not run, naming the test that killed it, instead of as a cascade of unrelated
``AcceleratorError``s. ``python -m tests.gpu`` runs every module in its own process, so one dead context costs
at most the rest of its module."""

from __future__ import annotations

import pytest
import torch

_dead: list[str] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _dead:
        pytest.fail(f"not run: the CUDA context died in {_dead[0]} (a device-side assert); run this test alone",
                    pytrace=False)  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    finally:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            try:
                torch.cuda.synchronize()
            except Exception:  # torch.AcceleratorError on a dead context (its name varies across torch versions)
                _dead.append(item.nodeid)
