"""The embedding encoder on the real bundled MiniLM: ONNX export cache, int8, torch, queries."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from index.embeddings import (
    ChildJobStopped,
    Encoder,
    EncoderConfig,
    EncoderError,
    ModelFolderError,
    fp32_clearly_faster,
    load_encoder,
)
from index.encoders.model_folder import bundled_model_path, read_model_folder
from index.encoders.onnx_cache import METADATA_FILE, ExportMetadata
from index.encoders.private_files import private_dirs
from index.encoders.quality_sample import code_sample

READ_JSON = '''def load_settings(path):
    """Parse the settings file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
'''
UNRELATED = """def draw_border(canvas, width, height, colour):
    for x in range(width):
        canvas.set_pixel(x, 0, colour)
        canvas.set_pixel(x, height - 1, colour)
"""


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bastion-cache")


@pytest.fixture(scope="module")
def first_load(cache_root: Path) -> dict[str, object]:
    """The first load on an empty cache, in a fresh process as a language server makes it."""
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from index.embeddings import EncoderConfig, load_encoder\n"
        f"config = EncoderConfig(cache_dir=Path({str(cache_root)!r}), quality_samples=16)\n"
        "with load_encoder(config) as encoder:\n"
        "    shape = list(encoder.encode(['def f(): pass']).shape)\n"
        "heavy = ('torch', 'sentence_transformers', 'transformers')\n"
        "print(json.dumps({'shape': shape, 'imported': [m for m in heavy if m in sys.modules]}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=600
    )
    report: dict[str, object] = json.loads(run.stdout.splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def encoder(cache_root: Path, first_load: dict[str, object]) -> Iterator[Encoder]:
    with load_encoder(EncoderConfig(cache_dir=cache_root, quality_samples=16)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return code_sample(16)


@pytest.fixture(scope="module")
def torch_reference(sample: list[str]) -> NDArray[np.float32]:
    """sentence-transformers itself, fp32 on torch: what every backend is measured against."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_path()), device="cpu", local_files_only=True)
    rows = model.encode(sample, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(rows, dtype=np.float32)


def _cosines(rows: NDArray[np.float32], reference: NDArray[np.float32]) -> NDArray[np.float64]:
    cosines: NDArray[np.float64] = (rows.astype(np.float64) * reference).sum(axis=1)
    return cosines


def _metadata(cache_root: Path) -> tuple[Path, ExportMetadata]:
    (directory,) = (cache_root / "models").iterdir()
    raw = (directory / METADATA_FILE).read_bytes()
    return directory, ExportMetadata.model_validate_json(raw)


def test_importing_the_module_loads_no_ml_runtime() -> None:
    probe = (
        "import json, sys, index.embeddings;"
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'sentence_transformers', "
        "'transformers') if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []


def test_the_first_load_exports_in_a_child_so_torch_stays_out_of_the_process(
    first_load: dict[str, object], cache_root: Path
) -> None:
    assert first_load == {"shape": [1, 384], "imported": []}
    _, metadata = _metadata(cache_root)
    assert metadata.torch_version  # made with torch, in the child


def test_stop_ends_a_first_export_at_once_and_leaves_no_child(tmp_path: Path) -> None:
    stop, outcome = threading.Event(), queue.Queue[BaseException | None]()
    config = EncoderConfig(cache_dir=tmp_path / "cache", quality_samples=8)

    def load() -> None:
        try:
            load_encoder(config, stop).close()
            outcome.put(None)
        except BaseException as exc:
            outcome.put(exc)

    threading.Thread(target=load, daemon=True).start()
    models = tmp_path / "cache" / "models"
    while not multiprocessing.active_children():  # the export has begun
        time.sleep(0.05)
    time.sleep(1)
    stop.set()
    stopped_at = time.monotonic()
    assert isinstance(outcome.get(timeout=30), ChildJobStopped)
    assert time.monotonic() - stopped_at < 2
    assert multiprocessing.active_children() == []
    (directory,) = models.iterdir()
    assert not (directory / METADATA_FILE).exists()


def test_stop_ends_the_wait_for_another_process_export(tmp_path: Path) -> None:
    folder = read_model_folder(None)
    directory = private_dirs(tmp_path, "models", folder.fingerprint())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(directory / '.lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(ChildJobStopped, match="waiting for"):
            load_encoder(EncoderConfig(cache_dir=tmp_path), stop)
        assert time.monotonic() - started < 2
        assert multiprocessing.active_children() == []  # no export was started
    finally:
        holder.kill()
        holder.wait()


def test_encode_gives_unit_float32_rows_of_the_model_dimension(encoder: Encoder) -> None:
    rows = encoder.encode(["def f():\n    return 1", "SELECT * FROM users", "x" * 5000])
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    assert (encoder.name, encoder.dim, encoder.max_tokens) == ("all-MiniLM-L6-v2", 384, 256)


def test_query_is_closer_to_the_function_that_reads_json(encoder: Encoder) -> None:
    query = encoder.encode_query("read a json file")
    json_row, unrelated_row = encoder.encode([READ_JSON, UNRELATED])
    assert float(query @ json_row) > float(query @ unrelated_row) + 0.1


def test_auto_picks_int8_unless_fp32_measured_clearly_faster(
    encoder: Encoder, cache_root: Path
) -> None:
    _, metadata = _metadata(cache_root)
    expected = "onnx" if fp32_clearly_faster(metadata) else "onnx-int8"
    assert encoder.backend == expected


def test_int8_stays_close_to_torch_fp32(
    cache_root: Path, sample: list[str], torch_reference: NDArray[np.float32]
) -> None:
    with load_encoder(EncoderConfig(backend="onnx-int8", cache_dir=cache_root)) as int8:
        assert int8.backend == "onnx-int8"
        cosines = _cosines(int8.encode(sample), torch_reference)
    assert cosines.mean() >= 0.98 and cosines.min() >= 0.95
    _, metadata = _metadata(cache_root)
    assert metadata.int8_cosine.mean >= 0.98 and metadata.int8_cosine.samples == 16
    assert metadata.int8_cosine.min <= metadata.int8_cosine.p1 <= metadata.int8_cosine.mean
    assert metadata.fp32_cosine.mean > 0.9999


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_fp32_backends_reproduce_sentence_transformers(
    backend: str, cache_root: Path, sample: list[str], torch_reference: NDArray[np.float32]
) -> None:
    config = EncoderConfig(backend=backend, device="cpu", cache_dir=cache_root)  # type: ignore[arg-type]
    with load_encoder(config) as fp32:
        assert fp32.backend == backend
        assert _cosines(fp32.encode(sample), torch_reference).min() > 0.9999
        query = fp32.encode_query(sample[0])
        assert query.shape == (384,) and abs(float(np.linalg.norm(query)) - 1.0) < 1e-5


def test_int8_is_refused_when_its_quality_is_below_the_threshold(cache_root: Path) -> None:
    config = EncoderConfig(backend="onnx-int8", cache_dir=cache_root, int8_min_cosine=0.9999)
    with load_encoder(config) as fallback:
        assert fallback.backend == "onnx"


def test_query_keeps_only_its_last_tokens(encoder: Encoder) -> None:
    tail = "\n".join(f"    total += price_of(item_{i})" for i in range(12))
    one = encoder.encode_query("import os\n" * 200 + tail)
    other = encoder.encode_query("class Unrelated:\n    pass\n" * 200 + tail)
    assert encoder.query_max_tokens == 24
    assert float(one @ other) > 0.9999
    assert encoder.count_tokens("import os\n" * 200 + tail) > encoder.max_tokens


def test_count_tokens_matches_the_model_tokenizer(encoder: Encoder) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    texts = ["", "def read_json(path): return json.load(open(path))", READ_JSON * 40, "naïve 日本"]
    for text in texts:
        expected = len(reference(text, truncation=False)["input_ids"])
        assert encoder.count_tokens(text) == expected, text[:40]


def test_export_cache_is_private(encoder: Encoder, cache_root: Path) -> None:
    for path in [cache_root, *cache_root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    directory, metadata = _metadata(cache_root)
    names = sorted(p.name for p in directory.iterdir())
    assert names == sorted([".lock", METADATA_FILE, metadata.fp32.name, metadata.int8.name])


def test_truncated_cached_model_is_exported_again(
    encoder: Encoder, cache_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged_root = tmp_path / "cache"
    shutil.copytree(cache_root, damaged_root)
    directory, metadata = _metadata(damaged_root)
    int8_file = directory / metadata.int8.name
    int8_file.write_bytes(int8_file.read_bytes()[: metadata.int8.size // 3])
    left_by_a_killed_export = directory / f".{metadata.fp32.name}.k1ll3d.tmp"
    left_by_a_killed_export.write_bytes(b"half an onnx graph")
    config = EncoderConfig(cache_dir=damaged_root, quality_samples=8)
    with caplog.at_level(logging.WARNING), load_encoder(config) as rebuilt:
        rows = rebuilt.encode([READ_JSON])
    assert "unusable" in caplog.text and metadata.int8.name in caplog.text
    assert not left_by_a_killed_export.exists()
    _, after = _metadata(damaged_root)
    assert int8_file.stat().st_size == after.int8.size > metadata.int8.size // 3
    assert float(rows[0] @ encoder.encode([READ_JSON])[0]) > 0.98


def test_batch_encoding_runs_at_low_priority_and_queries_do_not(cache_root: Path) -> None:
    def nice_of(task: Path) -> int:
        fields = task.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[16])  # field 19 of /proc/<pid>/task/<tid>/stat: nice

    own = os.getpriority(os.PRIO_PROCESS, 0)
    tasks = Path("/proc/self/task")
    before = {t.name for t in tasks.iterdir()}
    with load_encoder(EncoderConfig(cache_dir=cache_root, threads=2)) as background:
        background.encode(["def f(): pass"])
        new = [t for t in tasks.iterdir() if t.name not in before]
        niced = [t for t in new if nice_of(t) == min(19, own + 10)]
        # The worker thread and the one extra ONNX Runtime pool thread it created.
        assert len(niced) >= 2
        assert nice_of(tasks / str(os.getpid())) == own


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelFolderError, match="does not exist") as raised:
        load_encoder(EncoderConfig(model_path=missing))
    assert str(missing) in str(raised.value)


def test_folder_without_modules_json_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match=r"not a sentence-transformers model folder"):
        load_encoder(EncoderConfig(model_path=tmp_path))


def test_broken_modules_json_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text('[\n  {"type": "x",\n  oops\n]')
    with pytest.raises(ModelFolderError, match=r"modules\.json line 3"):
        load_encoder(EncoderConfig(model_path=tmp_path))


def test_onnx_refuses_a_model_with_modules_it_cannot_run(tmp_path: Path) -> None:
    model = tmp_path / "with-dense"
    shutil.copytree(bundled_model_path(), model, ignore=shutil.ignore_patterns("*.safetensors"))
    modules = json.loads((model / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EncoderError, match="Dense"):
        load_encoder(EncoderConfig(model_path=model, backend="onnx"))


def test_onnx_on_cuda_is_rejected_by_the_config() -> None:
    with pytest.raises(ValidationError, match="runs on the CPU"):
        EncoderConfig(backend="onnx", device="cuda")


def test_batch_size_follows_the_device_unless_set() -> None:
    assert EncoderConfig().batch_size_on("cpu") == 16
    assert EncoderConfig().batch_size_on("cuda") == 256
    assert EncoderConfig(batch_size=48).batch_size_on("cuda") == 48


def test_an_fp16_checkpoint_runs_in_fp32_on_the_cpu(
    tmp_path: Path, sample: list[str], torch_reference: NDArray[np.float32]
) -> None:
    from safetensors.torch import load_file, save_file

    model = tmp_path / "minilm-fp16"
    shutil.copytree(bundled_model_path(), model)
    weights = load_file(model / "model.safetensors")
    save_file(
        {name: w.half() if w.is_floating_point() else w for name, w in weights.items()},
        model / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = EncoderConfig(model_path=model, backend="torch", device="cpu")
    with load_encoder(config) as encoder:
        runner_model = encoder._batch_runner.model  # type: ignore[attr-defined]
        assert next(runner_model.parameters()).dtype.is_floating_point
        assert str(next(runner_model.parameters()).dtype) == "torch.float32"
        assert _cosines(encoder.encode(sample), torch_reference).min() > 0.999
