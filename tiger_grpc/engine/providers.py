"""Which ONNX Runtime execution providers to ask for, and the session options every
session of the engine shares; CUDA is asked for only when it can load."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

from ..config import CUDA_ATTENTION, Device, cuda_attention

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class DeviceError(RuntimeError):
    """CUDA was asked for and cannot be had: the message says why."""


def why_not_cuda() -> str | None:
    """Why the CUDA provider cannot run here (None: it can load)."""
    if CUDA not in ort.get_available_providers():
        return (
            f"this onnxruntime ({ort.__version__}) has no CUDA provider "
            "(install onnxruntime-gpu)"
        )
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver here (libcuda.so.1 does not load)"
    return None


def cuda_can_load() -> bool:
    """True when ORT has a CUDA provider and this machine has an NVIDIA driver.

    Asking ORT for CUDA without a driver works but logs a loud failure and falls
    back to CPU, so it is only asked for when it can load.
    """
    return why_not_cuda() is None


def check_device(device: Device) -> None:
    """At start: `cuda` that cannot get CUDA is a `DeviceError` with the reason;
    `auto` on CPU says why. (A precision CUDA does not serve is refused where it is
    resolved: `models.precision`.)"""
    reason = why_not_cuda()
    if device is Device.CUDA and reason is not None:
        raise DeviceError(f"TIGER_DEVICE=cuda, but {reason}")
    if device is Device.AUTO and reason is not None:
        log.info("running on CPU: %s", reason)


def in_use(session: ort.InferenceSession, device: Device, what: str) -> str:
    """The provider a session really got; CUDA asked for and not got is a
    `DeviceError` (ORT falls back to CPU quietly) for `cuda`, a warning for
    `auto`."""
    provider = str(session.get_providers()[0])
    if CUDA in choose_providers(device) and provider != CUDA:
        message = f"{what} asked for CUDA and ONNX Runtime gave it {provider}"
        if device is Device.CUDA:
            raise DeviceError(message)
        log.warning("%s: running on CPU", message)
    return provider


def choose_providers(device: Device) -> list[str]:
    """The providers to ask ORT for, best first (decided once per device setting)."""
    return list(_providers(device))


def provider_for(device: Device) -> str:
    """The provider `device` runs on, decided without loading CUDA's libraries
    (what a process that only picks a precision needs)."""
    if device is Device.CPU:
        return CPU
    return CUDA if device is Device.CUDA or cuda_can_load() else CPU


@functools.cache
def _providers(device: Device) -> tuple[str, ...]:
    if provider_for(device) == CUDA:
        if hasattr(ort, "preload_dlls"):
            try:  # NVIDIA's pip packages next to onnxruntime, as ORT knows them
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - the search below goes on
                log.warning("onnxruntime could not preload CUDA libraries: %s", exc)
        load_cuda_libraries()  # then wherever else they are, said in the log
        return (CUDA, CPU)
    return (CPU,)


# What ORT's CUDA provider (CUDA 13, cuDNN 9) needs, in the order ORT 1.31's
# `preload_dlls` loads them (libcurand is a direct dependency of the provider's
# library; cuDNN's own sub-libraries are loaded by libcudnn when it needs them).
CUDA_LIBRARIES = (
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudart.so.13",
    "libcudnn.so.9",
)


def _existing(paths: list[Path]) -> list[Path]:
    """The directories among `paths`, each once, in order."""
    return [d for i, d in enumerate(paths) if d.is_dir() and d not in paths[:i]]


def library_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where CUDA and cuDNN may be, in order: the operator's `TIGER_CUDA_LIB_DIR`
    (`:`-separated), then in each package directory, onnxruntime's first, then the
    rest of `sys.path` (PyTorch's among them: a GPU machine's CUDA often comes with
    PyTorch, in another environment than an onnxruntime put on `PYTHONPATH`),
    NVIDIA's pip packages and PyTorch's own `torch/lib`."""
    env = dict(os.environ) if env is None else env
    given = [Path(p) for p in env.get("TIGER_CUDA_LIB_DIR", "").split(os.pathsep) if p]
    ort_site = Path(ort.__file__).resolve().parent.parent
    sites = [ort_site, *(Path(p) for p in sys.path if p)]
    found: list[Path] = []
    for site in _existing(sites):
        found += [site / "nvidia" / "cu13" / "lib", *sorted(site.glob("nvidia/*/lib"))]
        found.append(site / "torch" / "lib")
    return _existing([*given, *found])


def locate(names: tuple[str, ...], dirs: list[Path]) -> dict[str, Path]:
    """Each library's file in the first directory that has it."""
    found: dict[str, Path] = {}
    for name in names:
        for directory in dirs:
            if (directory / name).is_file():
                found[name] = directory / name
                break
    return found


def load_cuda_libraries(env: dict[str, str] | None = None) -> dict[str, str]:
    """Loads CUDA and cuDNN from where they are (ORT's own `preload_dlls` looks
    only next to it, and prints its failures rather than raising); logs what was
    loaded from where, and what was not. Returns library -> where."""
    found = locate(CUDA_LIBRARIES, library_dirs(env))
    loaded: dict[str, str] = {}
    for name in CUDA_LIBRARIES:
        path = found.get(name)
        try:  # one already loaded (by ORT's preload) is not loaded twice
            ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
            loaded[name] = "already loaded"
            continue
        except OSError:
            pass
        try:
            ctypes.CDLL(str(path) if path else name, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            log.warning("CUDA library %s not loaded: %s", name, exc)
            continue
        loaded[name] = str(path) if path else "the system's library path"
        log.info("loaded %s from %s", name, loaded[name])
    return loaded


def cuda_options(graphs: bool, attention: str | None = None) -> dict[str, str]:
    """The CUDA provider's options: decode through CUDA graphs, and the attention
    kernels it may run (`attention`, the server's setting; None, as the tools
    leave it: TIGER_CUDA_ATTENTION). `flash` pins ORT's flash and memory-efficient
    kernels through `sdpa_kernel`, which also keeps ORT from preferring cuDNN's
    SDPA on compute capability 9 and later."""
    options = {"enable_cuda_graph": "1"} if graphs else {}
    kernels = CUDA_ATTENTION[attention or cuda_attention()]
    if kernels:
        options["sdpa_kernel"] = kernels
    return options


def session_options(spin: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT's worker threads spin while waiting for work: good inside a step (hundreds
    # of small parallel sections), bad after it, where they would take the cores from
    # the sampling, the gRPC threads and the gateway. Spin within a run, stop after.
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if spin else "0"
    )
    options.add_session_config_entry("session.force_spinning_stop", "1")
    profile = os.environ.get("TIGER_ORT_PROFILE")  # `make gpu-check`: the kernels
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return options


# On CUDA, without TIGER_KV_CACHE_GB: this share of the GPU memory still free once
# the model is loaded (the rest is for activations and other processes), or
# FALLBACK_CUDA_CACHE_GB when the CUDA runtime cannot say.
CUDA_FREE_SHARE = 0.8
FALLBACK_CUDA_CACHE_GB = 16.0


def default_cuda_cache_gb() -> float:
    free = cuda_free_bytes()
    if free is None:
        return FALLBACK_CUDA_CACHE_GB
    return CUDA_FREE_SHARE * free / 2**30


def _cuda_runtime() -> ctypes.CDLL | None:
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def nvidia_smi(field: str) -> str | None:
    """The first GPU's `field` (`--query-gpu`, without units) as `nvidia-smi` says,
    from outside: no CUDA context of this process's own. None without a GPU."""
    query = [f"--query-gpu={field}", "--format=csv,noheader,nounits"]
    try:
        said = subprocess.run(
            ["nvidia-smi", *query],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return said.stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def cuda_free_bytes() -> int | None:
    """Free memory of the current CUDA device (cudaMemGetInfo), None if unknown."""
    runtime = _cuda_runtime()
    if runtime is None:
        return None
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    status = runtime.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    return int(free.value) if status == 0 else None


def cuda_compute_major() -> int | None:
    """The current CUDA device's compute capability major version, None if unknown."""
    runtime = _cuda_runtime()
    if runtime is None:
        return None
    major = ctypes.c_int()
    status = runtime.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0)  # major
    return int(major.value) if status == 0 else None
