"""`POST /datasets/validate` reads every kind of data file `runner data validate` reads (plain text,
CSV, TSV, Parquet; preference data), by path and as an upload, with the same locations and without
showing where the server put an upload."""

from __future__ import annotations

import io
import json

import pytest

from .conftest import AUTH, ApiProject

CSV = b"instruction,output\nhi,hello\nbye,ciao,extra\nwhy,because\n"
TSV = b"instruction\toutput\nhi\thello\n"
TEXT = b"first document\nstill the first\n\nsecond document\n"
PREFERENCE = [
    {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": {"from": "gpt", "value": "b"},
    },
    {
        "conversations": [{"from": "human", "value": "q2"}],
        "chosen": {"from": "gpt", "value": "same"},
        "rejected": {"from": "gpt", "value": "same"},
    },
]


def _parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"instruction": ["q1", "q2"], "output": ["a1", None]}), out)
    return out.getvalue()


def _upload(api: ApiProject, name: str, data: bytes, **form: str) -> dict[str, object]:
    answer = api.client.post("/datasets/validate", headers=AUTH, data=form, files={"file": (name, data)})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_an_uploaded_csv_is_read_as_a_table_and_a_bad_row_is_located_by_its_row(api: ApiProject) -> None:
    report = _upload(api, "train.csv", CSV)
    assert (report["format"], report["records"], report["records_ok"], report["bad_count"]) == ("alpaca", 3, 2, 1)
    bad = report["bad_records"][0]  # type: ignore[index]
    assert bad["location"] == "train.csv, row 3" and "has 3 cells" in bad["reason"]
    assert "runner-api-check" not in json.dumps(report), "the server's temporary copy is not shown"


@pytest.mark.parametrize(
    ("name", "data", "fmt", "count"),
    [("train.tsv", TSV, "alpaca", 1), ("corpus.txt", TEXT, "text", 2), ("train.parquet", _parquet(), "alpaca", 2)],
)
def test_uploaded_tsv_text_and_parquet_files_read_as_the_command_line_reads_them(
    api: ApiProject, name: str, data: bytes, fmt: str, count: int
) -> None:
    report = _upload(api, name, data)
    assert (report["format"], report["records"]) == (fmt, count)


def test_a_table_on_the_server_is_checked_by_path(api: ApiProject) -> None:
    (api.root / "data" / "train.csv").write_bytes(CSV)
    report = api.client.post("/datasets/validate", headers=AUTH, json={"path": "data/train.csv"}).json()
    assert (report["format"], report["records"], report["bad_count"]) == ("alpaca", 3, 1)
    assert report["bad_records"][0]["location"] == "data/train.csv, row 3"


def test_a_broken_parquet_upload_is_a_422_naming_the_upload_not_the_servers_file(api: ApiProject) -> None:
    answer = api.client.post("/datasets/validate", headers=AUTH, files={"file": ("x.parquet", b"PAR1 broken")})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("x.parquet: cannot be read as Parquet")
    assert "runner-api-check" not in answer.text


def test_a_table_over_the_whole_file_limit_is_refused_with_the_flag_that_raises_it(api: ApiProject) -> None:
    from runner.api.limits import Limits

    api.settings.limits.__dict__.update(max_table=1024)  # frozen dataclass; the app reads it per request
    try:
        answer = api.client.post(
            "/datasets/validate", headers=AUTH, files={"file": ("big.csv", b"instruction,output\n" + b"q,a\n" * 1000)}
        )
    finally:
        api.settings.limits.__dict__.update(max_table=Limits().max_table)
    assert answer.status_code == 413 and "--api-max-table" in answer.json()["detail"]


def test_preference_data_is_detected_and_checked_pair_by_pair(api: ApiProject) -> None:
    data = json.dumps(PREFERENCE).encode()
    report = _upload(api, "dpo.json", data)
    assert (report["format"], report["records"], report["records_ok"], report["bad_count"]) == (
        "sharegpt-preference",
        2,
        1,
        1,
    )
    assert report["bad_records"][0]["index"] == 1  # type: ignore[index]
    given = _upload(api, "dpo.json", data, format="sharegpt-preference")
    assert (given["format"], given["format_reason"], given["records_ok"]) == ("sharegpt-preference", "given", 1)
