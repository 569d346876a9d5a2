"""``mkd-pipeline data import|verify`` as a user runs them: messages and exit codes."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main
from tests.pipeline.data.helpers import encode, rgb


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_import_fashion_mnist_and_verify(tmp_path, capsys, fake_fashion_mnist):
    src, _ = fake_fashion_mnist
    code, out, _ = run(capsys, "data", "import", "fashion-mnist", "--out", str(tmp_path / "ds"), "--src", str(src),
                       "--shard-size", "10")
    assert code == 0 and "train: 30 samples in 3 shards" in out and "test: 12 samples in 2 shards" in out
    code, out, _ = run(capsys, "data", "verify", str(tmp_path / "ds"), "--decode")
    assert code == 0 and "train: 3 shards, 30 samples: ok" in out


def test_missing_source_exit_code_and_hint(tmp_path, capsys):
    code, _, err = run(capsys, "data", "import", "fashion-mnist", "--out", str(tmp_path), "--src", str(tmp_path / "x"))
    assert code == 3 and "apt-get install dataset-fashion-mnist" in err


def test_bad_arguments_exit_2(tmp_path, capsys, image_folder):
    code, _, err = run(capsys, "data", "import", "imagefolder", str(image_folder), "--out", str(tmp_path))
    assert code == 2 and "--split" in err
    code, _, err = run(capsys, "data", "import", "imagefolder", str(image_folder), "--out", str(tmp_path),
                       "--split", "a_b")
    assert code == 2 and "letters and digits" in err


def test_verify_lists_every_problem(tmp_path, capsys, image_folder):
    # a JPEG whose header reads but whose body is cut: import keeps it, only --decode can tell
    jpeg = encode(rgb(0, 200, 200), "JPEG")
    (image_folder / "ant" / "img0.JPEG").write_bytes(jpeg[: len(jpeg) * 3 // 4])
    out = tmp_path / "ds"
    assert run(capsys, "data", "import", "imagefolder", str(image_folder), "--out", str(out), "--split", "train",
               "--shard-size", "5")[0] == 0
    assert run(capsys, "data", "verify", str(out))[0] == 0
    code, _, err = run(capsys, "data", "verify", str(out), "--decode")
    assert code == 1 and "unusable: jpg: cannot decode" in err and "1 problem(s)" in err

    shards = sorted(out.glob("train-*.tar"))
    data = bytearray(shards[0].read_bytes())
    data[700] ^= 0xFF
    shards[0].write_bytes(bytes(data))
    shards[1].unlink()
    (out / "train-000099.tar").write_bytes(b"")
    info = json.loads((out / "_info.json").read_text())
    info["splits"]["train"]["shard_lengths"][0] += 1
    (out / "_info.json").write_text(json.dumps(info))
    code, out_text, err = run(capsys, "data", "verify", str(out))
    assert code == 1
    assert "train-000000.tar: sha256 differs" in err
    assert "train-000001.tar: missing" in err
    assert "train-000099.tar: shard file not listed" in err
    assert "_info.json disagrees" in err
    assert "train: 3 shards, 12 samples: 2 problem(s)" in out_text


def test_verify_without_manifest_exit_3(tmp_path, capsys):
    code, _, err = run(capsys, "data", "verify", str(tmp_path))
    assert code == 3 and "manifest.json does not exist" in err
