"""How a file is cut into pieces fetched at once, and what a part holds (services/worker/models/ranged_fetch.py)."""

from __future__ import annotations

from pathlib import Path

from services.worker.models.ranged_fetch import bytes_held, held_bytes, plan, read_pieces

MB = 2**20


def test_a_small_file_is_one_request_and_a_large_one_several_pieces_that_tile_it():
    assert plan(10 * MB, min_piece=32 * MB) == [[0, 0, 10 * MB]]
    pieces = plan(200 * MB + 7, min_piece=32 * MB)
    assert len(pieces) == 4
    assert pieces[0][0] == 0 and pieces[-1][2] == 200 * MB + 7
    assert all(a[2] == b[0] for a, b in zip(pieces, pieces[1:]))  # no gap, no overlap
    assert all(start == done for start, done, _ in pieces)
    assert len(plan(90 * MB, min_piece=32 * MB)) == 2


def test_a_sequential_part_resumes_from_its_end():
    pieces = plan(100 * MB, have=70 * MB, min_piece=32 * MB)
    assert pieces == [[70 * MB, 70 * MB, 100 * MB]]
    assert bytes_held(pieces) == 70 * MB
    assert plan(5, have=5) == [[0, 5, 5]] and bytes_held(plan(5, have=5)) == 5


def test_what_a_part_holds_comes_from_its_record_else_its_size(tmp_path: Path):
    part = tmp_path / "blob.resume.incomplete"
    part.write_bytes(b"x" * 100)  # a sequential part: no record
    assert read_pieces(part) is None and held_bytes(part) == 100
    (tmp_path / "blob.resume.incomplete.pieces").write_text('{"pieces": [[0, 10, 50], [50, 60, 100]]}')
    assert held_bytes(part) == 20
    (tmp_path / "blob.resume.incomplete.pieces").write_text("{not json")  # a torn record reads as none
    assert held_bytes(part) == 100
