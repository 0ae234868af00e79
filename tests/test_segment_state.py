"""The segment job against its own state and its inputs' names, as an adversary would
try them: an unreadable ledger file, names at the edge of what the target allows, symbolic
links in and out of the input folder."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from samadapter import storage
from samadapter.segment import layout, plan
from samadapter.segment.ledger import read_ledger_table
from samadapter.segment.run import SegmentConfig, run_segmentation, summary_lines

from .conftest import tiny_adapter_and_images

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_plans_broadcast_join_and_its_hash_join_agree(ray_local):
    """A small ledger is joined by broadcast (its keys sent to every block of inputs), a
    large one by Ray Data's hash join: the same rows either way, for the plan's anti-join
    and the dry run's semi-join counts (null and empty versions included)."""
    import pyarrow as pa
    import ray.data

    n = 40
    listed = pa.table({"uri": [f"s3://b/in/{i:03d}.png" for i in range(n)],
                       "version": [None if i % 10 == 9 else str(i % 3) for i in range(n)],
                       "rel": [f"{i:03d}.png" for i in range(n)]})
    done = pa.table({"uri": [f"s3://b/in/{i:03d}.png" for i in range(0, n, 2)] + ["s3://b/in/999.png", "s3://b/in/009.png"],
                     "version": [None if i % 10 == 9 else str(i % 3) if i % 4 else "x" for i in range(0, n, 2)] + ["0", None]})
    inputs = ray.data.from_arrow(listed).repartition(3)
    # done: the even inputs with i % 4 == 2 (the others of the ledger have another version);
    # a null version matches nothing, not even a null (009)
    expected_anti = sorted(u for i, u in enumerate(listed.column("uri").to_pylist()) if i % 2 or i % 4 == 0)
    by_hash = ray.data.from_arrow(done)
    for right in (done, by_hash):
        anti = sorted(r["uri"] for r in plan.anti_join(inputs, right, n).take_all())
        assert anti == expected_anti, type(right)
        assert plan.semi_count(inputs, right, n) == n - len(expected_anti)


def _png(seed, hw=(30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _ledger_files(out):
    fs, path = storage.fsspec_filesystem(layout.ledger_dir(out))
    return sorted(p for p in fs.find(path) if "/_quarantine/" not in p)


def _truncate(out, path):
    fs, _ = storage.fsspec_filesystem(layout.ledger_dir(out))
    data = fs.cat_file(path)
    uri = path if storage.is_local(out) else f"s3://{path}"
    storage.write_bytes(uri, data[: len(data) // 2])
    return uri


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_truncated_ledger_file_is_moved_aside_and_its_inputs_redone(ray_local, s3_server, tmp_path, where, caplog):
    adapter, folder = tiny_adapter_and_images(tmp_path, 30, hw=(30, 40), seed=3)
    if where == "local":
        inp, out = str(folder), str(tmp_path / "out")
    else:
        inp, out = f"s3://test-bucket/state-{os.getpid()}/in", f"s3://test-bucket/state-{os.getpid()}/out"
        for p in folder.iterdir():
            storage.write_bytes(f"{inp}/{p.name}", p.read_bytes())
    cfg = dict(input=inp, output=out, checkpoint=adapter, ledger_rows_per_file=10)
    first = run_segmentation(SegmentConfig(**cfg), progress=False)
    assert first.ok == 30
    files = _ledger_files(out)
    assert len(files) == 3
    bad = _truncate(out, files[1])
    new = f"{inp}/new.png"
    storage.write_bytes(new if where == "s3" else os.path.join(inp, "new.png"), _png(99))

    dry = run_segmentation(SegmentConfig(**cfg, dry_run=True), progress=False)  # names it, moves nothing
    assert dry.plan["unreadable ledger files (a run moves them to ledger/_quarantine/ and redoes their inputs)"] == 1
    assert dry.plan["to do tonight"] == 11  # the bad file's 10 inputs and the new one
    assert storage.exists(bad)

    with caplog.at_level(logging.WARNING, logger="samadapter.segment.ledger"):
        rerun = run_segmentation(SegmentConfig(**cfg), progress=False)
    (line,) = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage() and "moved to" in r.getMessage()]
    assert bad in line and "bytes" in line and "_quarantine" in line  # the URI, its size, the error, where it went
    assert (rerun.todo, rerun.ok, rerun.quarantined) == (11, 11, [bad])
    assert any("ledger/_quarantine/" in line and line.endswith(": 1") for line in summary_lines(rerun))  # counted
    moved = storage.list_files(storage.join(layout.ledger_dir(out), layout.QUARANTINE))
    assert len(moved) == 1 and moved[0].endswith(os.path.basename(bad))  # never deleted
    rows = read_ledger_table(out).to_pylist()
    expected = sorted({f"{inp}/{p.name}" for p in folder.iterdir()} | {new})
    assert len(expected) == 31
    assert sorted(r["uri"] for r in rows if r["status"] == "ok") == expected  # every input ok exactly once
    assert run_segmentation(SegmentConfig(**cfg), progress=False).todo == 0


def test_a_second_run_of_an_output_stops_or_waits(ray_local, tmp_path, capsys):
    """Another run holds the output (a cron run and a hand run): one line naming it, status
    3, nothing written; with --wait-for-lease the second run waits, then does only what the
    first did not."""
    import threading

    from samadapter.jobs.segment import main
    from samadapter.segment.lease import Lease

    adapter, folder = tiny_adapter_and_images(tmp_path, 6, seed=10)
    out = str(tmp_path / "out")
    holder = Lease(out, "20261202-020000-cron01", timeout_s=600)
    holder.acquire()
    args = ["--input", str(folder), "--output", out, "--checkpoint", adapter, "--no-progress"]
    assert main(args) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "20261202-020000-cron01" in errors[0] and "since" in errors[0], errors
    assert not os.path.exists(os.path.join(out, "masks")) and not os.path.exists(os.path.join(out, "ledger"))
    threading.Timer(2.0, holder.release).start()
    assert main(args + ["--wait-for-lease"]) == 0
    assert len(read_ledger_table(out)) == 6 and not os.path.exists(layout.lease(out))


def test_long_names_work_up_to_the_targets_limit(ray_local, tmp_path):
    """A 240-byte name fits (its mask's name is 244 bytes); one whose mask name cannot
    exist (over 255 bytes) is a permanent name_too_long, not retried by later nights."""
    adapter, folder = tiny_adapter_and_images(tmp_path, 1, seed=5)
    fits, too_long = "a" * 236 + ".png", "b" * 250 + ".png"
    (folder / fits).write_bytes(_png(1))
    (folder / too_long).write_bytes(_png(2))
    cfg = dict(input=str(folder), output=str(tmp_path / "out"), checkpoint=adapter)
    s = run_segmentation(SegmentConfig(**cfg), progress=False)
    assert s.counts == {"ok": 2, "name_too_long": 1}, s.counts
    assert (tmp_path / "out" / "masks" / (fits + ".png")).exists()
    assert not list((tmp_path / "out" / "masks").glob(".*"))  # no temporary file left
    assert run_segmentation(SegmentConfig(**cfg), progress=False).todo == 0


def test_s3_keys_up_to_1024_bytes(ray_local, s3_server, tmp_path):
    adapter, _ = tiny_adapter_and_images(tmp_path, 0, seed=6)
    base = "s3://test-bucket/lk"
    deep = "/".join(["d" * 200] * 4)  # 803 bytes of folders
    fits = f"{deep}/{'f' * 191}.png"  # lk/in/<rel>: 1,005 bytes; lk/out/masks/<rel>.png: 1,016
    too_long = f"{deep}/{'g' * 201}.png"  # lk/in/<rel>: 1,015 bytes; lk/out/masks/<rel>.png: 1,026
    for key, seed in ((fits, 1), (too_long, 2)):
        storage.write_bytes(f"{base}/in/{key}", _png(seed))
    s = run_segmentation(SegmentConfig(input=f"{base}/in", input_root=f"{base}/in", output=f"{base}/out",
                                       checkpoint=adapter), progress=False)
    assert s.counts == {"ok": 1, "name_too_long": 1}, s.counts
    assert storage.exists(f"{base}/out/masks/{fits}.png")


def test_links_do_not_leave_the_input_folder(ray_local, tmp_path):
    adapter, folder = tiny_adapter_and_images(tmp_path, 2, seed=7)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "elsewhere.png").write_bytes(_png(3))
    (outside / "dir" / "x.png").write_bytes(_png(4))
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.png").write_bytes(_png(5))
    os.symlink("/etc/passwd", folder / "passwd.jpg")
    os.symlink(outside / "elsewhere.png", folder / "out_image.png")
    os.symlink(folder / "sub" / "inner.png", folder / "in_image.png")
    os.symlink(folder / "sub", folder / "linked_in")
    os.symlink(outside / "dir", folder / "linked_out")
    out = tmp_path / "out"
    s = run_segmentation(SegmentConfig(input=str(folder), output=str(out), checkpoint=adapter), progress=False)
    rows = {os.path.relpath(r["uri"], folder): r for r in read_ledger_table(str(out)).to_pylist()}
    for name in ("passwd.jpg", "out_image.png", "linked_out"):
        assert rows[name]["status"] == "unsafe_key" and "outside the input folder" in rows[name]["reason"], rows[name]
    assert "/etc/passwd" in rows["passwd.jpg"]["reason"]
    # links inside the folder work, under their own names (a linked folder's files too)
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {
        "000.png", "001.png", "sub/inner.png", "in_image.png", "linked_in/inner.png"}
    assert not (out / "masks" / "out_image.png.png").exists()
    assert s.counts == {"ok": 5, "unsafe_key": 3}


def test_a_link_back_up_the_tree_is_not_followed(tmp_path):
    from samadapter.segment.listing import _entries

    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "a" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path / "in", tmp_path / "in" / "a" / "up")  # in/a/up -> in: a loop
    files = sorted(os.path.relpath(e.uri, tmp_path / "in") for e in _entries(str(tmp_path / "in"), True))
    assert files == ["a/x.png"]


def test_a_model_actor_that_cannot_start_fails_the_night_with_its_error(ray_local, tmp_path, monkeypatch):
    """A constructor that raises the same error twice in a row ends the night with that
    error's last line (Ray Data's default restarts it without end)."""
    from samadapter.segment import model
    from samadapter.segment.run import ModelStartError

    class Broken:  # defined here: Ray ships it by value, so the workers get this one
        def __init__(self, **kwargs):
            raise RuntimeError("cannot open /models/x: permission denied")

        def __call__(self, batch):
            return batch

    monkeypatch.setattr(model, "Segmenter", Broken)
    adapter, folder = tiny_adapter_and_images(tmp_path, 4, seed=9)
    with pytest.raises(ModelStartError, match="could not start .*cannot open /models/x: permission denied"):
        run_segmentation(SegmentConfig(input=str(folder), output=str(tmp_path / "out"), checkpoint=adapter),
                         progress=False)


def _ledger_multiset(out):
    from collections import Counter

    return Counter((r["uri"], r["version"], r["status"], r["run_id"]) for r in read_ledger_table(out).to_pylist())


@pytest.mark.timeout(600)
def test_compaction_loses_and_doubles_nothing_wherever_it_crashes(ray_local, tmp_path, monkeypatch):
    """Two nights of small ledger files; a compaction stopped after each of its steps: every
    row read once at every point; then what the next writer does first (recover, compact):
    every row once, one file, nothing left of the compaction. After the crash at its commit,
    that writer is a real night, which has nothing to do."""
    import shutil

    from samadapter.segment import compaction

    adapter, folder = tiny_adapter_and_images(tmp_path, 12, seed=11)
    base = tmp_path / "base"
    for night in range(2):
        (folder / f"night{night}.png").write_bytes(_png(20 + night))
        run_segmentation(SegmentConfig(input=str(folder), output=str(base), checkpoint=adapter, ledger_rows_per_file=3),
                         progress=False)
    rows = _ledger_multiset(str(base))
    assert sum(rows.values()) == 14 and max(rows.values()) == 1
    (fp, files), = compaction.files_by_fingerprint(str(base)).items()
    assert len(files) >= 5

    class Crash(Exception):
        pass

    for step in compaction.STEPS:
        out = tmp_path / f"crash-{step}"
        shutil.copytree(base, out)

        def crash(at, step=step):
            if at == step:
                raise Crash(at)

        monkeypatch.setattr(compaction, "_after", crash)
        with pytest.raises(Crash):
            compaction.compact(str(out), fp, rows_per_file=1000)
        monkeypatch.setattr(compaction, "_after", lambda at: None)
        assert _ledger_multiset(str(out)) == rows, step  # readers: every row once, mid-crash
        if step == "committed":  # the night's own start: recover, compact, plan
            s = run_segmentation(SegmentConfig(input=str(folder), output=str(out), checkpoint=adapter,
                                               compact_above_files=1), progress=False)
            assert s.todo == 0, step
        else:
            compaction.recover(str(out))
            compaction.compact_where_needed(str(out), 1)
        assert _ledger_multiset(str(out)) == rows, step
        assert len(compaction.files_by_fingerprint(str(out))[fp]) == 1, step  # recovered, then compacted
        assert not (out / "ledger" / "_compaction").exists() or not any((out / "ledger" / "_compaction").iterdir())


def test_compact_ledger_command(ray_local, tmp_path, capsys):
    from samadapter.jobs.segment import main

    adapter, folder = tiny_adapter_and_images(tmp_path, 6, seed=12)
    out = str(tmp_path / "out")
    run_segmentation(SegmentConfig(input=str(folder), output=out, checkpoint=adapter, ledger_rows_per_file=2),
                     progress=False)
    before = _ledger_multiset(out)
    assert main(["--compact-ledger", "--output", out]) == 0
    assert "3 ledger files compacted" in capsys.readouterr().out
    assert _ledger_multiset(out) == before
    files = [p for p in (tmp_path / "out" / "ledger").rglob("*.parquet") if "_" not in p.parent.name[:1]]
    assert len(files) == 1
    import pyarrow.parquet as pq

    uris = pq.read_table(files[0]).column("uri").to_pylist()
    assert uris == sorted(uris)  # sorted by uri
    # the next compaction reads only what nights wrote since: the compacted file stays as it is
    (folder / "later.png").write_bytes(_png(30))
    (folder / "later2.png").write_bytes(_png(31))
    run_segmentation(SegmentConfig(input=str(folder), output=out, checkpoint=adapter, ledger_rows_per_file=1),
                     progress=False)
    assert main(["--compact-ledger", "--output", out]) == 0
    assert "2 ledger files compacted" in capsys.readouterr().out
    after = [p for p in (tmp_path / "out" / "ledger").rglob("*.parquet") if "_" not in p.parent.name[:1]]
    assert files[0] in after and len(after) == 2 and sum(_ledger_multiset(out).values()) == 8


def test_compaction_on_s3_with_a_crash_after_its_commit(ray_local, s3_server, monkeypatch):
    """The same on moto's S3 (moves are a copy and a delete there), and with the sort on the
    cluster (Ray Data: what a ledger above ``IN_PROCESS_ROWS`` takes): ledger files written
    as a night's driver writes them, a compaction stopped after its manifest, readers, then
    recovery."""
    import pyarrow as pa

    from samadapter.segment import compaction, ledger

    monkeypatch.setattr(compaction, "IN_PROCESS_ROWS", 0)

    out = f"s3://test-bucket/compaction-{os.getpid()}"
    for night in range(4):
        cols = ledger.empty_rows()
        for i in range(3):
            ledger.add_row(cols, uri=f"s3://in/{night}-{i}.png", version="v", status="ok", output_key=f"masks/{night}-{i}.png.png")
        ledger.write_ledger_file(pa.table(cols), out, "f" * 16, "adapter", f"night{night}")
    rows = _ledger_multiset(out)
    assert sum(rows.values()) == 12

    class Crash(Exception):
        pass

    def crash(at):
        if at == "committed":
            raise Crash(at)

    monkeypatch.setattr(compaction, "_after", crash)
    with pytest.raises(Crash):
        compaction.compact(out, "f" * 16)
    monkeypatch.setattr(compaction, "_after", lambda at: None)
    assert _ledger_multiset(out) == rows  # the staged new files instead of the old ones
    assert compaction.recover(out) == 1
    assert _ledger_multiset(out) == rows
    (files,) = compaction.files_by_fingerprint(out).values()
    assert len(files) == 1 and "compacted-" in files[0]
    assert not storage.list_files(f"{out}/ledger/_compaction")
