"""File kinds beyond JSON: plain text, CSV / TSV, Parquet, and hf: data sets from the datasets cache."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.data import DataFileError, read_records
from runner.data.reading import ReadOptions


def locations(result: Any) -> list[str]:
    return [str(r.location) for r in result.records]


# ---- plain text ----------------------------------------------------------------------------------

CORPUS = "First document,\nover two lines.\n\n\nSecond document.\n   \nThird\n"


@pytest.mark.parametrize(
    ("unit", "texts", "lines"),
    [
        ("paragraph", ["First document,\nover two lines.", "Second document.", "Third"], [1, 5, 7]),
        ("file", ["First document,\nover two lines.\n\n\nSecond document.\n   \nThird"], [1]),
        ("line", ["First document,", "over two lines.", "Second document.", "Third"], [1, 2, 5, 7]),
    ],
)
def test_a_text_file_is_one_document_per_block_file_or_line_located_by_its_first_line(
    tmp_path: Path, unit: str, texts: list[str], lines: list[int]
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    result = read_records([path], ReadOptions(text_unit=unit))
    assert [r.data for r in result.records] == [{"text": t} for t in texts]
    assert locations(result) == [f"{path}:{n}" for n in lines]


def test_a_text_file_that_is_not_utf8_is_refused_with_the_place(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(DataFileError, match=r"corpus.txt:2:4: not valid UTF-8 \(byte 0xe9\)"):
        read_records([path])


# ---- CSV / TSV -----------------------------------------------------------------------------------


def test_csv_cells_are_text_quoted_fields_keep_commas_and_newlines_and_a_bad_row_is_located(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        'instruction,input,output\nAdd 2 and 2,,4\n"Say ""hi"", twice","",'
        '"hi\nhi"\nan,extra,cell,here\nWhat is 6 x 7?,,42\n',
        encoding="utf-8",
    )
    result = read_records([path])
    assert [r.data for r in result.records] == [
        {"instruction": "Add 2 and 2", "input": "", "output": "4"},
        {"instruction": 'Say "hi", twice', "input": "", "output": "hi\nhi"},
        {"instruction": "What is 6 x 7?", "input": "", "output": "42"},  # the answer stays text
    ]
    assert locations(result) == [f"{path}, row 2", f"{path}, row 3", f"{path}, row 5"]
    assert [str(b) for b in result.bad] == [
        f"{path}, row 4: has 4 cells; the header names 3 (a stray delimiter or an unclosed quote?)"
    ]


def test_a_tsv_has_no_quoting_and_a_headerless_file_gets_numbered_columns_as_wide_as_its_widest_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sts.tsv"  # as the STS Benchmark: no header, some rows with two more cells
    path.write_text(
        'captions\t0001\t5.000\tA "plane" is taking off.\tAn air plane is taking off.\n'
        "news\t0002\t3.8\tA man plays.\tA man is playing.\tsource A\tsource B\n"
        "news\t0003\t1.0\tA cat.\tA car.\n",
        encoding="utf-8",
    )
    result = read_records([path])
    assert result.records[0].data == {
        "column1": "captions",
        "column2": "0001",
        "column3": "5.000",
        "column4": 'A "plane" is taking off.',
        "column5": "An air plane is taking off.",
        "column6": "",
        "column7": "",
    }
    assert result.records[1].data["column7"] == "source B" and result.records[2].data["column4"] == "A cat."
    assert locations(result) == [f"{path}, row 1", f"{path}, row 2", f"{path}, row 3"] and not result.bad


def test_a_csv_whose_delimiter_is_a_tab_is_read_as_tsv_and_the_header_setting_overrides(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("query\tpositive\nred\tcrimson\nblue\tazure\n", encoding="utf-8")
    assert read_records([path]).records[0].data == {"query": "red", "positive": "crimson"}
    forced = read_records([path], ReadOptions(csv_header="no")).records
    assert forced[0].data == {"column1": "query", "column2": "positive"} and len(forced) == 3


def test_scored_pairs_from_a_csv_read_their_scores_from_text(tmp_path: Path) -> None:
    from runner.data.embedding import prepare_embedding_data

    path = tmp_path / "sts.csv"
    path.write_text(
        "sentence1,sentence2,score\nA cat.,A kitten.,4.5\nA car.,A tree.,0.2\nA dog.,A hound.,3\n", encoding="utf-8"
    )
    data = prepare_embedding_data([path], format="scored-pairs")
    assert [e.score for e in data.train] == [4.5, 0.2, 3.0]


# ---- Parquet -------------------------------------------------------------------------------------


def test_parquet_keeps_its_types_and_a_row_with_nan_is_bad(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "weight": 1.0},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}], "weight": math.nan},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = read_records([path])
    assert [r.data for r in result.records] == [rows[0]]
    assert [str(b) for b in result.bad] == [
        f"{path}, row 2: 'weight' is nan; numbers must be finite (write null or a number)"
    ]


def test_a_file_that_is_not_parquet_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match=r"broken.parquet: cannot be read as Parquet"):
        read_records([path])


# ---- hf: data sets -------------------------------------------------------------------------------


def populate_hub_cache(cache: Path, repo_id: str, rows: list[dict[str, Any]], split: str = "train") -> None:
    """Lay a data set out in a datasets cache as a download from the Hub leaves it
    (``ORG___NAME/default/0.0.0/HASH/NAME-SPLIT.arrow`` + dataset_info.json), built by datasets' own
    JSON builder from a local file: nothing is downloaded."""
    from datasets.packaged_modules.json.json import Json

    org, name = repo_id.split("/")
    source = cache.parent / f"{name}-{split}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    builder = Json(
        cache_dir=str(cache),
        dataset_name=f"{org}___{name}",
        config_id="default",
        hash="0123abcd",
        data_files={split: str(source)},
    )
    builder.download_and_prepare()
    folder = Path(builder.cache_dir)
    (folder / f"{org}___{name}-{split}.arrow").rename(folder / f"{name}-{split}.arrow")


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no request leaves the machine
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_an_hf_data_set_is_read_from_the_cache_offline_with_its_rows_located(offline_cache: Path) -> None:
    rows = [{"instruction": "Add 2 and 2", "output": "4"}, {"instruction": "Say hi", "output": "hi"}]
    populate_hub_cache(offline_cache, "acme/tiny-sft", rows)
    result = read_records(["hf:acme/tiny-sft?split=train"])
    assert [r.data for r in result.records] == rows
    assert locations(result) == ["hf:acme/tiny-sft?split=train[0]", "hf:acme/tiny-sft?split=train[1]"]


def test_an_hf_data_set_not_in_the_cache_offline_says_how_to_get_it(offline_cache: Path) -> None:
    with pytest.raises(DataFileError) as info:
        read_records(["hf:acme/never-cached"])
    assert str(info.value).startswith(
        "hf:acme/never-cached?split=train: not in the datasets cache, and the Hub cannot be reached"
    )
    assert "read it once with network access" in str(info.value)


def test_an_hf_split_the_cache_lacks_is_named(offline_cache: Path) -> None:
    populate_hub_cache(offline_cache, "acme/tiny-sft", [{"text": "hello"}])
    with pytest.raises(DataFileError, match=r"^hf:acme/tiny-sft\?split=test: .*test"):
        read_records(["hf:acme/tiny-sft?split=test"])


def test_without_the_datasets_library_an_hf_source_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataFileError, match=r"pip install 'runner\[hub\]'"):
        read_records(["hf:acme/tiny-sft"])


def test_reading_text_csv_and_json_never_imports_datasets(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "a.txt").write_text("doc", encoding="utf-8")
    (tmp_path / "b.csv").write_text("text\nrow\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    code = (
        "import sys; from runner.data.reading import read_records; "
        f"read_records([{str(tmp_path / 'a.txt')!r}, {str(tmp_path / 'b.csv')!r}, {str(tmp_path / 'c.jsonl')!r}]); "
        "print('datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False", out.stderr
