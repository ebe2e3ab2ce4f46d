"""Ingest (harness.data.ingest, tools/make_shards.py): webdataset tars, parquet and captions files in,
filters with a report that names every skip, several resolutions with the same ids, resume."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ingest_inputs import image_bytes, sample, write_tar
from PIL import Image

from harness.data.filters import Policy
from harness.data.format import read_manifest
from harness.data.ingest import REPORT_FILE, Options, ingest
from harness.data.reader import ShardedReader
from harness.data.sources import Unit, folder_units, input_units

REPO = Path(__file__).resolve().parents[2]


def readback(folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (caption, image CHW) of every sample of a data set."""
    manifest = read_manifest(folder)
    with ShardedReader(folder, resolution_px=manifest.resolution_px, global_batch=1) as r:
        batch = r.read(range(len(r)))
    return {i: (c, img.numpy()) for i, c, img in zip(batch.ids, batch.captions, batch.images)}


def options(*resolutions, **policy) -> Options:
    return Options(Policy(tuple(resolutions), **policy), samples_per_shard=4, compression=None)


@pytest.fixture
def messy_tars(tmp_path) -> list[str]:
    """Two tars of img2dataset samples, one of each kind the filters handle."""
    big = image_bytes(64, 64)
    a = write_tar(tmp_path / "00000.tar",
                  sample("000000000", big, "a red square")
                  + sample("000000001", image_bytes(48, 48, (0, 0, 255), "JPEG"), "a blue square", "jpg", as_json=True)
                  + sample("000000002", b"not an image at all", "broken")
                  + sample("000000003", image_bytes(64, 64, (0, 255, 0)), "   ")
                  + sample("000000004", image_bytes(64, 64, (9, 9, 9)), "x" * 50)
                  + sample("000000005", image_bytes(128, 32), "a wide strip")
                  + sample("000000006", image_bytes(16, 16), "a tiny square")
                  + sample("000000007", image_bytes(64, 64, (1, 2, 3)), None)
                  + [("000000008.txt", b"caption without an image")])
    b = write_tar(tmp_path / "00001.tar",
                  sample("000100000", big, "the red square again")
                  + sample("000000001", image_bytes(40, 40, (5, 5, 5), "WEBP"), "an id seen before", "webp")
                  + sample("000100002", image_bytes(96, 64, (0, 200, 0)), "a green square 🦤 東京"))
    return [str(a), str(b)]


def test_webdataset_filters_report_and_resolutions(tmp_path, messy_tars):
    out = tmp_path / "out"
    result = ingest(input_units([str(tmp_path / "*.tar")]), out, options(32, 64, max_caption_chars=40),
                    progress=False)
    report = json.loads((out / REPORT_FILE).read_text())
    assert report == json.loads(json.dumps(result.report))
    skipped = {k: v["count"] for k, v in report["skipped"].items()}
    assert skipped == {"undecodable": 1, "empty_caption": 1, "long_caption": 1, "aspect_ratio": 1,
                       "too_small": 1, "no_caption": 1, "missing_image": 1, "duplicate_image": 1, "duplicate_id": 1}
    assert report["records"] == 12
    # Every skip names the tar and the key.
    assert report["skipped"]["undecodable"]["examples"][0].startswith(f"{messy_tars[0]}:000000002 (000000002.png): ")
    assert "000100000" in report["skipped"]["duplicate_image"]["examples"][0]
    assert "'000000000'" in report["skipped"]["duplicate_image"]["examples"][0]
    assert report["skipped"]["duplicate_id"]["examples"][0].startswith(f"{messy_tars[1]}:000000001")
    assert "128x32" in report["skipped"]["aspect_ratio"]["examples"][0]
    assert report["captions"]["emoji"]["count"] == 1 and report["captions"]["non_latin_letters"]["count"] == 1

    low, high = readback(out / "32"), readback(out / "64")
    assert sorted(low) == ["000000000", "000000001", "000100002"]
    assert sorted(high) == ["000000000", "000100002"]           # the 48 px source is not in the 64 px set
    assert report["too_small_for"]["64"]["count"] == 1 and report["stored"] == {"32": 3, "64": 2}
    assert low["000000001"][0] == "a blue square"                # the caption from {key}.json
    # The 96x64 source, centre-cropped to 64x64, is the 64 px sample as it is; at 32 px its 2x2 area mean.
    crop = np.asarray(Image.open(io.BytesIO(image_bytes(96, 64, (0, 200, 0)))))[:, 16:80].transpose(2, 0, 1)
    assert np.array_equal(high["000100002"][1], crop)
    area = crop.reshape(3, 32, 2, 32, 2).astype(int).sum((2, 4))
    assert np.array_equal(low["000100002"][1], (area + 2) // 4)


def test_strict_makes_damage_an_error_naming_the_file(tmp_path, messy_tars):
    with pytest.raises(ValueError, match=r"00000\.tar:000000002 \(000000002\.png\): .*undecodable; --strict"):
        ingest(input_units(messy_tars), tmp_path / "out", options(32, strict=True), progress=False)


def test_a_truncated_tar_keeps_what_it_can_read(tmp_path):
    whole = write_tar(tmp_path / "whole.tar", [m for i in range(6)
                                               for m in sample(f"k{i}", image_bytes(32, 32, (i, 0, 0)), f"c {i}")])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:4000])
    result = ingest(input_units([str(cut)]), tmp_path / "out", options(32), progress=False)
    assert 1 <= result.manifests[32].num_samples < 6
    assert result.report["skipped"]["broken_input"]["examples"][0].startswith(f"cut.tar: {cut}: cannot be read after")
    with pytest.raises(ValueError, match="cut.tar: cannot be read after .*broken_input; --strict"):
        ingest(input_units([str(cut)]), tmp_path / "strict", options(32, strict=True), progress=False)


def test_captions_file_names_the_row_of_a_missing_or_corrupt_image(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_bytes(32, 32))
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG truncated")
    captions = tmp_path / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(r) for r in [{"file": "a.png", "caption": "a"},
                                                          {"file": "gone.png", "caption": "b"},
                                                          {"file": "bad.png", "caption": "c"}]) + "\n")
    result = ingest(folder_units(tmp_path / "img", captions, None, 2), tmp_path / "out", options(32), progress=False)
    assert result.manifests[32].num_samples == 1
    missing = result.report["skipped"]["missing_image"]["examples"][0]
    assert missing.startswith(f"{captions}:2 ({tmp_path / 'img' / 'gone.png'}): cannot read the image")
    assert result.report["skipped"]["undecodable"]["examples"][0].startswith(f"{captions}:3 ")
    with pytest.raises(ValueError, match=r"captions.jsonl:2 \(.*gone.png\): cannot read the image"):
        ingest(folder_units(tmp_path / "img", captions, None, 2), tmp_path / "strict", options(32, strict=True),
               progress=False)
    captions.write_text('{"caption": "no file"}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:1: missing 'file'"):
        folder_units(tmp_path / "img", captions, None, 2)


def test_parquet_bytes_and_struct_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [image_bytes(32, 32, (i * 40, 0, 0)) for i in range(5)]
    pq.write_table(pa.table({"jpg": images, "txt": [f"caption {i}" for i in range(5)],
                             "uid": [f"u{i}" for i in range(5)]}), tmp_path / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"jpg": [{"bytes": images[0], "path": "x.png"}, {"bytes": None, "path": None}],
                             "txt": ["same image as u0", "no bytes"], "uid": ["v0", "v1"]}), tmp_path / "b.parquet")
    units = input_units([str(tmp_path / "*.parquet")], image_column="jpg", caption_column="txt", key_column="uid")
    assert [u.name for u in units] == ["a.parquet#0", "a.parquet#1", "a.parquet#2", "b.parquet#0"]
    result = ingest(units, tmp_path / "out", options(32), progress=False)
    assert sorted(readback(tmp_path / "out")) == [f"u{i}" for i in range(5)]
    assert result.report["skipped"]["duplicate_image"]["count"] == 1
    missing = result.report["skipped"]["missing_image"]["examples"][0]
    assert missing.startswith(f"{tmp_path / 'b.parquet'} row 1 (id v1)")
    with pytest.raises(ValueError, match=r"a.parquet: no column 'caption' \(--caption-column\); the columns are jpg, "):
        input_units([str(tmp_path / "a.parquet")], image_column="jpg")
    without_keys = input_units([str(tmp_path / "a.parquet")], image_column="jpg", caption_column="txt")
    assert [r.key for u in without_keys for r in u.read()] == [f"a-{i:06d}" for i in range(5)]


def test_small_sources_need_upsample(tmp_path):
    tar = write_tar(tmp_path / "s.tar", sample("k0", image_bytes(16, 16), "tiny")
                    + sample("k1", image_bytes(32, 32), "ok"))
    with pytest.raises(ValueError, match=r"out/64: no sample is stored at 64 px .*--upsample"):
        ingest(input_units([str(tar)]), tmp_path / "out", options(32, 64), progress=False)
    assert read_manifest(tmp_path / "out" / "32").num_samples == 1          # the lower resolution was written
    result = ingest(input_units([str(tar)]), tmp_path / "up", options(32, 64, upsample=True), progress=False)
    assert {r: m.num_samples for r, m in result.manifests.items()} == {32: 2, 64: 2}
    assert sorted(readback(tmp_path / "up" / "64")) == ["k0", "k1"]


def test_rerun_after_a_kill_keeps_finished_units(tmp_path):
    tars = [write_tar(tmp_path / f"{t}.tar", [m for i in range(5) for m in
                                              sample(f"{t}-{i}", image_bytes(32, 32, (t * 50, i * 50, 0)), f"c{t}{i}")])
            for t in range(3)]
    units = input_units([str(t) for t in tars])

    def dies(records):
        yield next(records)
        raise KeyboardInterrupt          # the job is killed while unit 2 is being written

    calls = {"n": 0}

    def killed_read():
        calls["n"] += 1                  # the scan reads the unit whole; the write pass dies in it
        return units[2].read() if calls["n"] == 1 else dies(units[2].read())

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ingest(units[:2] + [Unit(units[2].name, killed_read)], out, options(32, 64, upsample=True), progress=False)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "64").glob("shard-0000[01]-*.h5")}
    assert len(finished) == 10 and not (out / "64" / "manifest.json").exists()   # 1 sample per shard at 64 px
    result = ingest(units, out, options(32, 64, upsample=True), progress=False)
    assert result.report["kept_from_earlier_run"] == 2
    assert {p: (out / "64" / p).stat().st_mtime_ns for p in finished} == finished
    fresh = ingest(units, tmp_path / "fresh", options(32, 64, upsample=True), progress=False)
    assert result.manifests == fresh.manifests                       # the same bytes as an uninterrupted run
    assert not (out / "64" / ".journal").exists()


def test_unknown_token_characters_are_counted(tmp_path):
    from harness.data.tokenizer import train_tokenizer

    train_tokenizer(["a red square", "a blue circle", "green tree"] * 20, tmp_path / "tok.model", vocab_size=40)
    tar = write_tar(tmp_path / "t.tar", sample("k0", image_bytes(32, 32), "a red square")
                    + sample("k1", image_bytes(32, 32, (0, 0, 9)), "a red 🦤 東京"))
    opts = Options(Policy((32,)), compression=None, tokenizer=str(tmp_path / "tok.model"))
    report = ingest(input_units([str(tar)]), tmp_path / "out", opts, progress=False).report
    assert report["captions"]["unknown_token"] == {"count": 1, "examples": [f"{tar}:k1 (k1.png): 🦤東京"]}
    assert report["unknown_characters"] == {"🦤": 1, "東": 1, "京": 1}


def test_make_shards_cli(tmp_path, messy_tars):
    help_text = subprocess.run([sys.executable, "tools/make_shards.py", "--help"], cwd=REPO, capture_output=True,
                               text=True)
    assert help_text.returncode == 0 and "--upsample" in help_text.stdout and "--input" in help_text.stdout
    run = subprocess.run([sys.executable, "tools/make_shards.py", "--input", messy_tars[0], "--out",
                          str(tmp_path / "ds"), "--resolution", "32", "--strict", "--no-progress"], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"make_shards: error: {messy_tars[0]}:000000002")
