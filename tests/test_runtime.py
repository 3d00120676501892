import platform

import pytest

from capsjax.infra import runtime


def test_tune_host_allocator_can_be_turned_off(monkeypatch):
  monkeypatch.setenv("CAPSJAX_TUNE_MALLOC", "0")
  assert runtime.tune_host_allocator() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_host_allocator_applies_on_glibc(monkeypatch):
  monkeypatch.delenv("CAPSJAX_TUNE_MALLOC", raising=False)
  assert runtime.tune_host_allocator() is True  # this machine's backend: the CPU
  assert runtime.tune_host_allocator("cpu") is True


def test_tune_host_allocator_leaves_an_accelerator_backend_alone(monkeypatch):
  monkeypatch.delenv("CAPSJAX_TUNE_MALLOC", raising=False)
  assert runtime.tune_host_allocator("gpu") is False
  assert runtime.tune_host_allocator("tpu") is False
