"""The GPUs' claims (gridtao/app/gpuclaim.py) on their own: one holder per GPU, named to the
next; released with the holder; never taken in a folder or through a file another user could
control."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridtao.app.gpuclaim import GpuInUse, claim_gpus
from gridtao.errors import GridtaoError

GPUS = [(0, "GPU-aaaa"), (1, "GPU-bbbb")]


def test_a_gpu_is_claimed_once_and_free_again_when_released(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "gpus"
    first = claim_gpus(folder, GPUS, node_id="n1")
    with pytest.raises(GpuInUse) as held:
        claim_gpus(folder, [(3, "GPU-cccc"), (7, "GPU-bbbb")], node_id="n2")
    assert held.value.index == 7 and held.value.uuid == "GPU-bbbb"
    assert "pid " in held.value.holder and "node n1" in held.value.holder
    assert "(pid " in str(held.value) and "\n" not in str(held.value)
    # Nothing of the refused claim is kept: GPU-cccc is free.
    claim_gpus(folder, [(3, "GPU-cccc")], node_id="n3").release()
    first.release()
    claim_gpus(folder, GPUS, node_id="n2").release()


def test_claims_are_refused_in_a_folder_others_may_write(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)  # not sticky: anyone could hold or swap the claims there
    with pytest.raises(GridtaoError, match="others may write to it"):
        claim_gpus(run / "gpus", GPUS, node_id="n1")


def test_a_claim_file_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "gpus"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    (folder / "GPU-aaaa.lock").symlink_to(victim)
    with pytest.raises(GridtaoError, match="cannot open"):
        claim_gpus(folder, GPUS, node_id="n1")
    assert victim.read_text() == "keep me\n"
