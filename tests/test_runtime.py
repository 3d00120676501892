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


def test_the_expected_platform_is_found_without_starting_a_backend():
  """On this machine (no plugin, JAX_PLATFORMS unset or cpu) it is the CPU; a subprocess checks
  that no backend was started to find it (settings after that would not take)."""
  import subprocess
  import sys
  code = ("from jax._src import xla_bridge; from capsjax.infra import runtime; "
          "print(runtime.expected_platform(), xla_bridge.backends_are_initialized())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ["cpu", "False"], out.stderr
