"""The CPU kernels flywheel pins on import (flywheel.cpu_kernels): what it sets, what it leaves alone."""

import os
import subprocess
import sys

from flywheel import cpu_kernels

AVX2 = {"sse2", "avx", "avx2", "fma"}


def test_an_avx2_cpu_gets_the_avx2_paths_of_mkl_and_aten():
    environ = {}
    assert cpu_kernels.pin(environ, flags=AVX2) == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert environ == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_the_users_own_settings_win_and_native_opts_out():
    environ = {"MKL_CBWR": "COMPATIBLE"}
    assert cpu_kernels.pin(environ, flags=AVX2) == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert environ["MKL_CBWR"] == "COMPATIBLE"
    environ = {"FLYWHEEL_CPU_KERNELS": "native"}
    assert cpu_kernels.pin(environ, flags=AVX2) == {} and "MKL_CBWR" not in environ


def test_a_cpu_without_avx2_is_left_alone():
    """ATen trusts the variable: AVX2 kernels there would die of an illegal instruction."""
    environ = {}
    assert cpu_kernels.pin(environ, flags={"sse2", "avx"}) == {} and environ == {}


def test_an_unknown_setting_warns_in_one_line_and_pins(capsys):
    environ = {"FLYWHEEL_CPU_KERNELS": "avx512"}
    assert cpu_kernels.pin(environ, flags=AVX2) == {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FLYWHEEL_CPU_KERNELS" in err


def test_importing_flywheel_pins_them_before_torch_computes():
    """In a fresh process: flywheel first, then torch's ATen reports the pinned capability."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "FLYWHEEL_CPU_KERNELS")}
    code = ("import os, flywheel, torch; torch.ones(3).sum(); "
            "print(os.environ.get('MKL_CBWR'), torch.backends.cpu.get_cpu_capability())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if "avx2" in cpu_kernels.cpu_flags():
        assert out.split() == ["AVX2", "AVX2"]
    else:
        assert out.split()[0] == "None"
