"""Zip archives (checkpoints, ``.npz``/``.pt`` datasets) with absurd member counts are refused from their end records.

A 47 MB ``.pt`` listing 1,000,000 empty members took 6.2 s and 170 MB to size
(a ``ZipInfo`` per member) before torch parsed its directory again.  The
archives here are written by hand (:func:`tests._archives.many_member_zip`), a few MB of empty members.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hwsearch.archives import MAX_MEMBERS, TooManyMembers, UnpackedTooLarge, check_unpacked_size
from tests._archives import many_member_zip

@pytest.mark.parametrize("members, declared, zip64, mention", [
    (1_000_000, None, True, "lists 1000000 members"),  # ZIP64 end records, as the reviewer's 47 MB file
    (60_000, None, False, "lists 60000 members"),  # a plain end record
    (MAX_MEMBERS + 1, 1, False, f"lists more than {MAX_MEMBERS} members"),  # the record understates it
    (MAX_MEMBERS + 1, 1, True, f"lists more than {MAX_MEMBERS} members"),
])
def test_an_archive_with_too_many_members_is_refused_quickly(tmp_path: Path, members: int, declared: int | None,
                                                             zip64: bool, mention: str) -> None:
    """The 1,000,000-member archive took 6.2 s to size (and then passed: its members are empty)."""
    archive = many_member_zip(tmp_path / "many.pt", members, declared=declared, zip64=zip64)
    started = time.thread_time()  # this thread's CPU: a busy host's waits are not the check's cost
    with pytest.raises(TooManyMembers, match=mention) as refused:
        check_unpacked_size(archive)
    assert time.thread_time() - started < 1.5
    assert isinstance(refused.value, UnpackedTooLarge)  # every reader's existing refusal applies


def test_the_bound_is_a_count_a_hundred_times_the_real_checkpoints(tmp_path: Path) -> None:
    """MAX_MEMBERS empty members are sized (0 bytes), one more is refused; the demo checkpoints
    hold a few hundred members, and the generator writes archives zipfile reads."""
    with zipfile.ZipFile(many_member_zip(tmp_path / "small.pt", 3, zip64=True)) as archive:
        assert len(archive.infolist()) == 3
    check_unpacked_size(many_member_zip(tmp_path / "full.pt", MAX_MEMBERS, zip64=True), limit=0)
    with pytest.raises(TooManyMembers, match=f"lists {MAX_MEMBERS + 1} members"):
        check_unpacked_size(many_member_zip(tmp_path / "over.pt", MAX_MEMBERS + 1, zip64=True))
    for checkpoint in sorted((Path(__file__).resolve().parents[1] / "hwsearch" / "demo").glob("*.pt")):
        with zipfile.ZipFile(checkpoint) as archive:
            assert len(archive.infolist()) * 100 <= MAX_MEMBERS, checkpoint


def test_checkpoint_and_dataset_readers_refuse_it_naming_the_file(tmp_path: Path) -> None:
    """The library's loaders go through the same check (the checkpoint's refusal was torch's
    parse error, after the sizing), and real files are still sized exactly as zipfile sizes them."""
    from hwsearch.archives import _unpacked_size
    from hwsearch.data import load_images
    from hwsearch.supernets import CheckpointError, create_supernet

    archive = many_member_zip(tmp_path / "many.pt", 200_000, zip64=True)
    with pytest.raises(CheckpointError, match=f"checkpoint {archive} lists 200000 members"):
        create_supernet("demo_mbv3_mnist", checkpoint=archive)
    dataset = archive.rename(tmp_path / "many.npz")
    with pytest.raises(ValueError, match=f"{dataset} lists 200000 members"):
        load_images(dataset, size=32)

    torch.save({"w": torch.zeros(1000), "b": torch.zeros(3)}, tmp_path / "w.pt")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    for path in (tmp_path / "w.pt", tmp_path / "d.npz"):
        with zipfile.ZipFile(path) as real:
            assert _unpacked_size(path) == sum(member.file_size for member in real.infolist())
    assert len(load_images(tmp_path / "d.npz", size=8)) == 4


@pytest.mark.parametrize("pointed", [2**63 - 1, 2**63, 2**64 - 1])
def test_a_zip64_locator_pointing_past_any_file_is_no_archive_to_size(tmp_path: Path, pointed: int) -> None:
    """A locator at 2**63 or more made ``seek`` raise ValueError, and a checkpoint upload answered 500."""
    import struct

    from hwsearch.supernets import CheckpointError, create_supernet

    torch.save({"w": torch.zeros(4)}, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    end = data.rindex(b"PK\x05\x06")
    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(data[:end] + struct.pack("<4sLQL", b"PK\x06\x07", 0, pointed, 1) + data[end:])
    check_unpacked_size(crafted)  # not sized, not raised on: its reader says what is wrong with it
    with pytest.raises(CheckpointError):
        create_supernet("demo_mbv3_mnist", checkpoint=crafted)
