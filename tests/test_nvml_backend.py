"""NvmlBackend over the simulator: every method, every error path, fallbacks, dry run, threads."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pynvml
import pytest

from gridtao.clock import VirtualClock
from gridtao.config.agent import GpusConfig, SimConfig
from gridtao.gpu import open_backend
from gridtao.gpu.backend import (
    GpuBackend,
    GpuDriverError,
    GpuError,
    GpuInvalidArgument,
    GpuLost,
    GpuNotSupported,
    GpuPermissionDenied,
    GpuTimeout,
    GpuUnavailable,
    PowerLimits,
)
from gridtao.gpu.nvml import NvmlBackend, check_nvml_distribution, translate_nvml_error
from gridtao.gpu.sim.nvml import SimNvml

SET = "nvmlDeviceSetPowerManagementLimit"
FIELDS = "nvmlDeviceGetFieldValues"


def make(**overrides: Any) -> tuple[NvmlBackend, SimNvml, VirtualClock]:
    clock = VirtualClock()
    sim = SimNvml.from_config(dataclasses.replace(SimConfig(), **overrides), clock)
    return NvmlBackend(sim), sim, clock


def test_implements_the_protocol_and_enumerates() -> None:
    backend, sim, _ = make()
    assert isinstance(backend, GpuBackend)
    infos = backend.devices()
    assert [d.index for d in infos] == list(range(8))
    h = sim.nvmlDeviceGetHandleByIndex(4)
    assert infos[4].uuid == sim.nvmlDeviceGetUUID(h)
    assert infos[4].name == "NVIDIA H100 80GB HBM3"
    assert backend.power_limits(4) == PowerLimits(min_mw=200_000, max_mw=700_000,
                                                  default_mw=700_000)
    assert backend.driver_version == "gridtao-sim"


def test_reads() -> None:
    backend, sim, clock = make()
    sim.set_demand_w(2, 500.0)
    clock.advance(2.0)
    assert abs(backend.instant_power_mw(2) - 500_000) < 15_000
    assert abs(backend.average_power_mw(2) - 500_000) < 1_000
    assert backend.enforced_limit_mw(2) == 700_000
    e0 = backend.energy_mj(2)
    clock.advance(1.0)
    assert backend.energy_mj(2) - e0 == pytest.approx(500_000, rel=0.01)  # 500 W for 1 s
    assert sim.call_count(FIELDS, 2) == 1


def test_set_limit_reads_back_and_skips_no_ops() -> None:
    backend, sim, clock = make()
    assert backend.set_limit_mw(0, 300_000) == 300_000
    assert sim.nvmlDeviceGetEnforcedPowerLimit(sim.nvmlDeviceGetHandleByIndex(0)) == 300_000
    assert sim.call_count(SET) == 1
    assert backend.set_limit_mw(0, 300_000) == 300_000
    assert sim.call_count(SET) == 1  # skipped
    clock.advance(0.2)
    assert sim.true_power_mw(0) < 300_100  # within 10 time constants
    assert backend.set_limit_mw(0, 700_000) == 700_000
    assert sim.call_count(SET) == 2


def test_no_op_is_rewritten_when_someone_else_changed_the_limit() -> None:
    backend, sim, _ = make()
    backend.set_limit_mw(1, 300_000)
    sim.nvmlDeviceSetPowerManagementLimit(sim.nvmlDeviceGetHandleByIndex(1), 500_000)  # nvidia-smi
    assert backend.set_limit_mw(1, 300_000) == 300_000
    assert sim.call_count(SET, 1) == 3


@pytest.mark.parametrize("bad", [199_999, 700_001, 0, -5])
def test_out_of_range_limit_rejected_with_nothing_changed(bad: int) -> None:
    backend, sim, _ = make()
    with pytest.raises(GpuInvalidArgument, match="GPU 3") as exc:
        backend.set_limit_mw(3, bad)
    assert exc.value.index == 3
    assert sim.call_count(SET) == 0
    assert backend.enforced_limit_mw(3) == 700_000


def test_non_integer_limit_rejected() -> None:
    backend, sim, _ = make()
    with pytest.raises(GpuInvalidArgument):
        backend.set_limit_mw(0, 300_000.5)  # type: ignore[arg-type]
    assert sim.call_count(SET) == 0


def test_unknown_device_index() -> None:
    backend, _, _ = make()
    with pytest.raises(GpuInvalidArgument, match="no such device"):
        backend.instant_power_mw(8)


def test_dry_run_never_writes(caplog: pytest.LogCaptureFixture) -> None:
    clock = VirtualClock()
    sim = SimNvml.from_config(SimConfig(), clock)
    backend = NvmlBackend(sim, dry_run=True)
    with caplog.at_level(logging.INFO, logger="gridtao.gpu"):
        assert backend.set_limit_mw(5, 300_000) == 700_000
        assert backend.set_limit_mw(5, 300_000) == 700_000
    assert sim.call_count(SET) == 0
    assert backend.enforced_limit_mw(5) == 700_000
    assert "dry-run: would set GPU 5 limit 300.0 W" in caplog.messages
    with pytest.raises(GpuInvalidArgument):
        backend.set_limit_mw(5, 100_000)  # still validated


# -- error translation ---------------------------------------------------------------------------


def test_lost_gpu() -> None:
    backend, sim, _ = make()
    sim.inject_fault(6, "lost")
    calls: list[Callable[[], int]] = [
        lambda: backend.instant_power_mw(6),
        lambda: backend.average_power_mw(6),
        lambda: backend.enforced_limit_mw(6),
        lambda: backend.energy_mj(6),
        lambda: backend.set_limit_mw(6, 300_000),
    ]
    for call in calls:
        with pytest.raises(GpuLost, match="GPU 6") as exc:
            call()
        assert isinstance(exc.value.__cause__, pynvml.NVMLError_GpuIsLost)
        assert exc.value.index == 6
    assert backend.instant_power_mw(5) > 0


def test_no_permission() -> None:
    backend, sim, _ = make()
    sim.inject_fault(0, "no_permission")
    with pytest.raises(GpuPermissionDenied, match="GPU 0: set power limit") as exc:
        backend.set_limit_mw(0, 300_000)
    assert isinstance(exc.value.__cause__, pynvml.NVMLError_NoPermission)
    sim.clear_faults()
    assert backend.set_limit_mw(0, 300_000) == 300_000  # a failed write was not remembered


def test_not_supported_write() -> None:
    backend, sim, _ = make()
    sim.inject_fault(0, "not_supported")
    with pytest.raises(GpuNotSupported) as exc:
        backend.set_limit_mw(0, 300_000)
    assert isinstance(exc.value.__cause__, pynvml.NVMLError_NotSupported)


def test_instant_falls_back_to_power_usage_permanently() -> None:
    backend, sim, clock = make()
    sim.inject_fault(1, "not_supported", calls=1)  # one refusal is enough to switch for good
    clock.advance(0.05)
    usage = sim.nvmlDeviceGetPowerUsage(sim.nvmlDeviceGetHandleByIndex(1))
    assert backend.instant_power_mw(1) == usage
    field_calls = sim.call_count(FIELDS, 1)
    for _ in range(5):
        backend.instant_power_mw(1)
    assert sim.call_count(FIELDS, 1) == field_calls
    assert sim.call_count(FIELDS, 0) == 0
    backend.instant_power_mw(0)
    assert sim.call_count(FIELDS, 0) == 1  # other devices keep the instant field


class NoFieldFunction(SimNvml):
    """A driver too old to have nvmlDeviceGetFieldValues."""

    def nvmlDeviceGetFieldValues(self, handle: object, fieldIds: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


class FieldFails(SimNvml):
    """A field read that fails with its own per-field error code."""

    code = pynvml.NVML_ERROR_UNKNOWN

    def nvmlDeviceGetFieldValues(self, handle: object, fieldIds: Any) -> Any:
        values = super().nvmlDeviceGetFieldValues(handle, fieldIds)
        values[0].nvmlReturn = self.code
        return values


def test_function_not_found_falls_back() -> None:
    sim = NoFieldFunction(VirtualClock())
    backend = NvmlBackend(sim)
    assert backend.instant_power_mw(0) == sim.nvmlDeviceGetPowerUsage(
        sim.nvmlDeviceGetHandleByIndex(0)
    )


def test_per_field_error_is_translated() -> None:
    backend = NvmlBackend(FieldFails(VirtualClock()))
    with pytest.raises(GpuDriverError, match="GPU 0: read instant power") as exc:
        backend.instant_power_mw(0)
    assert isinstance(exc.value.__cause__, pynvml.NVMLError_Unknown)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (pynvml.NVML_ERROR_GPU_IS_LOST, GpuLost),
        (pynvml.NVML_ERROR_NO_PERMISSION, GpuPermissionDenied),
        (pynvml.NVML_ERROR_NOT_SUPPORTED, GpuNotSupported),
        (pynvml.NVML_ERROR_TIMEOUT, GpuTimeout),
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, GpuInvalidArgument),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, GpuUnavailable),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, GpuUnavailable),
        (pynvml.NVML_ERROR_UNKNOWN, GpuDriverError),
        (pynvml.NVML_ERROR_RESET_REQUIRED, GpuDriverError),
        (pynvml.NVML_ERROR_IN_USE, GpuDriverError),
    ],
)
def test_translation_table(code: int, cls: type[GpuError]) -> None:
    nvml_error = pynvml.NVMLError(code)
    err = translate_nvml_error(nvml_error, 3, "read power")
    assert type(err) is cls
    assert err.index == 3
    assert str(err).startswith("GPU 3: read power failed:")
    assert f"NVML error {code}" in str(err)


class NoDriver(SimNvml):
    def nvmlInit(self) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


class LostAtStart(SimNvml):
    def nvmlDeviceGetUUID(self, handle: object) -> str:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)


def test_no_driver_is_one_actionable_error() -> None:
    with pytest.raises(GpuUnavailable, match=r"no NVIDIA driver found.*--backend sim") as exc:
        NvmlBackend(NoDriver(VirtualClock()))
    assert isinstance(exc.value.__cause__, pynvml.NVMLError_LibraryNotFound)
    with pytest.raises(GpuUnavailable, match="no NVIDIA driver found"):
        open_backend(GpusConfig(backend="nvml"), nvml_module=NoDriver(VirtualClock()))


def test_failed_enumeration_shuts_nvml_down() -> None:
    sim = LostAtStart(VirtualClock())
    with pytest.raises(GpuLost, match="GPU 0: read UUID"):
        NvmlBackend(sim)
    assert sim.call_count("nvmlShutdown") == 1
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()


# -- lifecycle and threads ----------------------------------------------------------------------


def test_close_is_idempotent_and_final() -> None:
    backend, sim, _ = make()
    with backend:
        backend.instant_power_mw(0)
    backend.close()
    assert sim.call_count("nvmlShutdown") == 1
    with pytest.raises(GpuUnavailable, match="closed"):
        backend.instant_power_mw(0)
    with pytest.raises(GpuUnavailable):
        backend.set_limit_mw(0, 300_000)


def test_concurrent_sets_from_8_threads() -> None:
    backend, sim, _ = make()
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            start.wait()
            for k in range(50):
                want = 200_000 + 1_000 * ((i * 7 + k) % 500)
                assert backend.set_limit_mw(i, want) == want
                backend.instant_power_mw(i)
            backend.set_limit_mw(i, 250_000 + i * 10_000)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [backend.enforced_limit_mw(i) for i in range(8)] == [
        250_000 + i * 10_000 for i in range(8)
    ]
    assert sim.call_count(SET) == 8 * 51


def test_open_backend_sim_and_injected_nvml() -> None:
    clock = VirtualClock()
    backend = open_backend(GpusConfig(sim=SimConfig(count=3, device=None)), clock=clock)
    assert len(backend.devices()) == 3
    backend.close()
    sim = SimNvml(clock)
    backend = open_backend(GpusConfig(backend="nvml", dry_run=True), nvml_module=sim)
    assert backend.dry_run and len(backend.devices()) == 8
    backend.set_limit_mw(0, 300_000)
    assert sim.call_count(SET) == 0


# -- the deprecated pynvml distribution --------------------------------------------------------

MODULE = "/venv/site-packages/pynvml.py"


def versions(table: dict[str, str]) -> Any:
    def version_of(name: str) -> str:
        if name not in table:
            raise importlib.metadata.PackageNotFoundError(name)
        return table[name]

    return version_of


def files(table: dict[str, list[str]]) -> Any:
    def files_of(name: str) -> Iterable[str]:
        if name not in table:
            raise importlib.metadata.PackageNotFoundError(name)
        return table[name]

    return files_of


def test_nvidia_ml_py_alone_is_accepted() -> None:
    check_nvml_distribution(
        module_file=MODULE,
        version_of=versions({"nvidia-ml-py": "13.580.82"}),
        files_of=files({"nvidia-ml-py": [MODULE, "/venv/site-packages/example.py"]}),
    )


def test_pynvml_12_shim_is_accepted() -> None:
    check_nvml_distribution(
        module_file=MODULE,
        version_of=versions({"pynvml": "12.0.0", "nvidia-ml-py": "13.580.82"}),
        files_of=files({"nvidia-ml-py": [MODULE], "pynvml": []}),
    )


@pytest.mark.parametrize(
    ("installed", "owned"),
    [
        ({"pynvml": "11.5.0", "nvidia-ml-py": "12.535.133"}, {"nvidia-ml-py": [MODULE]}),
        ({"pynvml": "11.5.0"}, {"pynvml": [MODULE]}),
        ({"pynvml": "12.0.0", "nvidia-ml-py": "13.580.82"},
         {"nvidia-ml-py": ["/elsewhere/pynvml.py"], "pynvml": [MODULE]}),
    ],
)
def test_deprecated_pynvml_is_refused(installed: dict[str, str],
                                      owned: dict[str, list[str]]) -> None:
    with pytest.raises(GpuUnavailable) as exc:
        check_nvml_distribution(
            module_file=MODULE, version_of=versions(installed), files_of=files(owned)
        )
    assert "pip uninstall pynvml && pip install nvidia-ml-py" in str(exc.value)


def test_this_environment_passes_the_distribution_check() -> None:
    check_nvml_distribution()
