"""Offline text: calibration and evaluation parts never overlap; windows follow the protocol."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from prunelab import data
from prunelab.assets import read_r_character_vectors
from prunelab.evaluate import windows_of
from tests.conftest import requires_embedded


@requires_embedded
@pytest.mark.parametrize("name", ["wiki", "austen", "gsm8k"])
def test_calibration_and_evaluation_parts_are_disjoint(name):
    calibration = data.documents(name, "calibration")
    evaluation = data.documents(name, "evaluation")
    assert calibration and evaluation
    assert not set(calibration) & set(evaluation)


@requires_embedded
def test_calibration_windows_are_seeded_and_sized(tokenizer):
    spec = data.CalibrationSpec("wiki", nsamples=3, seqlen=32, seed=0)
    first = data.calibration_tokens(spec, tokenizer)
    again = data.calibration_tokens(spec, tokenizer)
    other = data.calibration_tokens(data.CalibrationSpec("wiki", 3, 32, seed=1), tokenizer)
    assert first.shape == (3, 32) and torch.equal(first, again) and not torch.equal(first, other)


def test_evaluation_windows_do_not_overlap_and_drop_the_tail():
    stream = torch.arange(10).unsqueeze(0)
    assert windows_of(stream, 4, None).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows_of(stream, 4, 1).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="fewer than one window"):
        windows_of(stream, 11, None)


def _r_record(strings: list[str | None]) -> bytes:
    body = b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    body += struct.pack(">ii", 16, len(strings))
    for text in strings:
        if text is None:
            body += struct.pack(">ii", 9, -1)
        else:
            raw = text.encode()
            body += struct.pack(">ii", 0x40009, len(raw)) + raw
    return struct.pack(">i", len(body)) + zlib.compress(body)


def test_r_lazy_load_database_decoding():
    blob = _r_record(["EMMA", "", "Emma Woodhouse, handsome", None]) + _r_record(["PERSUASION"])
    assert read_r_character_vectors(blob) == [["EMMA", "", "Emma Woodhouse, handsome", None], ["PERSUASION"]]
