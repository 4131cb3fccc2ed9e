"""Readers: small fixture files written into tmp_path (never real datasets)."""
from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from behavior_lm.data.events import DEFAULT_BEHAVIOR, EventLog
from behavior_lm.data.readers import (
    read_amazon_reviews,
    read_events,
    read_movielens,
    read_pairs,
    read_recbole_inter,
    read_sequences,
    read_table,
)
from behavior_lm.errors import DataError, RecipeError


# ----------------------------------------------------------------------------- helpers
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def cols(log: EventLog) -> dict[str, list]:
    d = log.table.to_pydict()
    d["value"] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                  for v in d["value"]]
    return d


def where(path: Path, line: int | None = None, field: str | None = None) -> str:
    """Regex for the location prefix DataError puts in its message."""
    out = re.escape(str(path))
    if line is not None:
        out += f":{line}"
    out += ": "
    if field is not None:
        out += re.escape(f"field '{field}': ")
    return "^" + out


# ============================================================================= read_table
def test_table_csv_with_mapping(tmp_path):
    p = write(tmp_path, "reviews.csv",
              "reviewerID,asin,unixReviewTime,overall,type,extra\n"
              "A1,0001,1400000000,5.0,view,x\n"
              "A2,B002,1400000100,3,buy,y\n"
              "A1,B002,1400000200,,view,z\n")
    log = read_table(p, columns={"user_id": "reviewerID", "item_id": "asin",
                                 "timestamp": "unixReviewTime", "value": "overall",
                                 "behavior": "type"})
    assert log.source == str(p)
    assert cols(log) == {
        "user_id": ["A1", "A2", "A1"],
        "item_id": ["0001", "B002", "B002"],  # leading zeros kept
        "behavior": ["view", "buy", "view"],
        "timestamp": [1400000000, 1400000100, 1400000200],
        "value": [5.0, 3.0, None],
        "line": [2, 3, 4],
    }
    assert log.table.column("value").null_count == 1


def test_table_default_columns_file_order_and_blank_lines(tmp_path):
    p = write(tmp_path, "log.csv", "user_id,item_id\nu1,a\n\nu2,b\n   \nu1,c\n\n")
    log = read_table(p)
    assert cols(log) == {
        "user_id": ["u1", "u2", "u1"],
        "item_id": ["a", "b", "c"],
        "behavior": [DEFAULT_BEHAVIOR] * 3,
        "timestamp": [0, 1, 2],
        "value": [None, None, None],
        "line": [2, 4, 6],
    }


def test_table_tsv_gz(tmp_path):
    p = write(tmp_path, "events.tsv.gz",
              "user_id\titem_id\ttimestamp\tvalue\n7\t"
              'say"hi\t10\t1.5\n8\tx\t11\t2\n')
    log = read_table(p)
    assert log.source == str(p)
    assert cols(log) == {
        "user_id": ["7", "8"],
        "item_id": ['say"hi', "x"],  # no quoting in TSV
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [10, 11],
        "value": [1.5, 2.0],
        "line": [2, 3],
    }


def test_table_taobao_headerless_with_behavior_map(tmp_path):
    p = write(tmp_path, "UserBehavior.csv",
              "1,2268318,2520377,pv,1511544070\n"
              "1,2333346,2520771,cart,1511561733\n"
              "2,2576651,149192,buy,1511572885\n")
    log = read_table(p, header=False, names=["user", "item", "category", "behavior", "ts"],
                     columns={"user_id": "user", "item_id": "item", "behavior": "behavior",
                              "timestamp": "ts"},
                     behavior_map={"pv": "browse", "cart": "cart", "buy": "purchase",
                                   "fav": "fav"})
    assert cols(log) == {
        "user_id": ["1", "1", "2"],
        "item_id": ["2268318", "2333346", "2576651"],
        "behavior": ["browse", "cart", "purchase"],
        "timestamp": [1511544070, 1511561733, 1511572885],
        "value": [None, None, None],
        "line": [1, 2, 3],
    }


def test_table_behavior_not_in_map(tmp_path):
    p = write(tmp_path, "UserBehavior.csv", "1,10,1,pv,5\n1,11,1,fav,6\n")
    with pytest.raises(DataError, match=where(p, 2, "behavior") + r".*'fav' is not in "
                       r"behavior_map"):
        read_table(p, header=False, names=["u", "i", "c", "b", "t"],
                   columns={"user_id": "u", "item_id": "i", "behavior": "b", "timestamp": "t"},
                   behavior_map={"pv": "browse"})


def test_table_headerless_without_names_uses_positions(tmp_path):
    p = write(tmp_path, "x.csv", "a,b,3\nc,d,4\n")
    log = read_table(p, header=False, columns={"user_id": "0", "item_id": "1",
                                               "timestamp": "2"})
    assert cols(log)["user_id"] == ["a", "c"]
    assert cols(log)["timestamp"] == [3, 4]
    assert cols(log)["line"] == [1, 2]


def test_table_iso_timestamps(tmp_path):
    p = write(tmp_path, "iso.csv",
              "user_id,item_id,timestamp\n"
              "u,a,2020-01-01T00:00:00Z\n"
              "u,b,2020-01-01T02:00:00+02:00\n"
              "u,c,2020-01-02\n"
              "u,d,2020-01-02 00:00:30\n"
              "u,e,1577836800\n")
    log = read_table(p)
    assert cols(log)["timestamp"] == [1577836800, 1577836800, 1577923200, 1577923230,
                                      1577836800]


def test_table_quoted_newline_keeps_line_numbers(tmp_path):
    p = write(tmp_path, "q.csv", 'user_id,item_id,note\nu,a,"two\nlines"\nu,b,x\n')
    log = read_table(p)
    assert cols(log)["item_id"] == ["a", "b"]
    assert cols(log)["line"] == [2, 4]


def test_table_parquet(tmp_path):
    p = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "uid": pa.array([10, 11, 10], pa.int64()),
        "iid": pa.array(["x", "y", "z"]),
        "ts": pa.array([1_600_000_000, 1_600_000_000, 1_600_000_005], pa.int64()),
        "rating": pa.array([1.0, None, 2.5]),
    }), p)
    log = read_table(p, columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts",
                                 "value": "rating"})
    assert cols(log) == {
        "user_id": ["10", "11", "10"],
        "item_id": ["x", "y", "z"],
        "behavior": [DEFAULT_BEHAVIOR] * 3,
        "timestamp": [1_600_000_000, 1_600_000_000, 1_600_000_005],
        "value": [1.0, None, 2.5],
        "line": [1, 2, 3],
    }


def test_table_parquet_timestamp_type(tmp_path):
    p = tmp_path / "events.pq"
    pq.write_table(pa.table({
        "user_id": ["u", "u"], "item_id": ["a", "b"],
        "timestamp": pa.array([pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-01 00:00:07")],
                              pa.timestamp("ms")),
    }), p)
    assert cols(read_table(p))["timestamp"] == [1577836800, 1577836807]


def test_table_jsonl(tmp_path):
    p = write(tmp_path, "events.jsonl",
              '{"u": "007", "i": 12, "t": 5, "kind": "click", "other": {"x": [1]}}\n'
              "\n"
              '{"u": 8, "i": "B00", "t": "1970-01-01T00:00:06Z", "kind": "buy"}\n')
    log = read_table(p, columns={"user_id": "u", "item_id": "i", "timestamp": "t",
                                 "behavior": "kind"})
    assert cols(log) == {
        "user_id": ["007", "8"],
        "item_id": ["12", "B00"],
        "behavior": ["click", "buy"],
        "timestamp": [5, 6],
        "value": [None, None],
        "line": [1, 3],
    }


def test_table_explicit_fmt_and_sep(tmp_path):
    p = write(tmp_path, "log.txt", "user_id;item_id\nu;a\n")
    assert cols(read_table(p, fmt="csv", sep=";"))["item_id"] == ["a"]
    with pytest.raises(RecipeError, match="unknown table format 'xls'"):
        read_table(p, fmt="xls")
    with pytest.raises(DataError, match=where(p) + "cannot tell the table format"):
        read_table(p)


# ============================================================================= read_movielens
def test_movielens_udata(tmp_path):
    p = write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n"
                                  "22\t377\t1\t878887116\n")
    assert cols(read_movielens(p)) == {
        "user_id": ["196", "186", "22"],
        "item_id": ["242", "302", "377"],
        "behavior": [DEFAULT_BEHAVIOR] * 3,
        "timestamp": [881250949, 891717742, 878887116],
        "value": [3.0, 3.0, 1.0],
        "line": [1, 2, 4],
    }


def test_movielens_udata_gz(tmp_path):
    p = write(tmp_path, "u.data.gz", "1\t2\t5\t100\n")
    log = read_movielens(p)
    assert log.source == str(p)
    assert cols(log)["item_id"] == ["2"] and cols(log)["value"] == [5.0]


def test_movielens_ratings_dat(tmp_path):
    p = write(tmp_path, "ratings.dat", "1::1193::5::978300760\r\n1::661::3::978302109\r\n")
    assert cols(read_movielens(p)) == {
        "user_id": ["1", "1"],
        "item_id": ["1193", "661"],
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [978300760, 978302109],
        "value": [5.0, 3.0],
        "line": [1, 2],
    }


def test_movielens_ratings_csv(tmp_path):
    p = write(tmp_path, "ratings.csv",
              "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    assert cols(read_movielens(p)) == {
        "user_id": ["1", "1"],
        "item_id": ["1", "3"],
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [964982703, 964981247],
        "value": [4.0, 4.5],
        "line": [2, 3],
    }


@pytest.mark.parametrize("text", ["1::2::3::4\n", "userId,movieId,rating,timestamp\n1,2,3,4\n",
                                  "1\t2\t3\t4\n"])
def test_movielens_sniffs_content(tmp_path, text):
    p = write(tmp_path, "renamed.txt", text)
    log = read_movielens(p)
    assert (cols(log)["user_id"], cols(log)["item_id"], cols(log)["value"],
            cols(log)["timestamp"]) == (["1"], ["2"], [3.0], [4])


def test_movielens_unknown_variant(tmp_path):
    p = write(tmp_path, "mystery.txt", "\n1 2 3 4\n")
    with pytest.raises(DataError, match=where(p, 2) + "cannot tell the MovieLens variant"):
        read_movielens(p)


# ============================================================================= read_recbole_inter
def test_recbole_inter(tmp_path):
    p = write(tmp_path, "ml-100k.inter",
              "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n"
              "196\t242\t3\t881250949\tgood film\n"
              "186\t302\t3.5\t891717742.0\t\n")
    assert cols(read_recbole_inter(p)) == {
        "user_id": ["196", "186"],
        "item_id": ["242", "302"],
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [881250949, 891717742],
        "value": [3.0, 3.5],
        "line": [2, 3],
    }


def test_recbole_inter_without_rating_or_time(tmp_path):
    p = write(tmp_path, "x.inter", "session_id:token\tuser_id:token\titem_id:token\n"
                                   "s\tu\ta\ns\tu\tb\n")
    assert cols(read_recbole_inter(p)) == {
        "user_id": ["u", "u"], "item_id": ["a", "b"], "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [0, 1], "value": [None, None], "line": [2, 3],
    }


def test_recbole_missing_user_field(tmp_path):
    p = write(tmp_path, "x.inter", "uid:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match=where(p, 1, "user_id") + r"no 'user_id' field in the "
                       r"header; the header has 'uid:token', 'item_id:token'"):
        read_recbole_inter(p)


# ============================================================================= read_amazon_reviews
def test_amazon_jsonl_gz(tmp_path):
    rows = [
        {"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "overall": 5.0,
         "unixReviewTime": 1393545600, "reviewText": "line\nbreak", "helpful": [2, 3]},
        {"reviewerID": "A14VAT5EAX3D9S", "asin": "0000013714", "overall": 4.0,
         "unixReviewTime": 1363392000, "style": {"Format:": " Hardcover"}},
    ]
    p = write(tmp_path, "reviews_Musical_5.json.gz",
              "".join(json.dumps(r) + "\n" for r in rows))
    log = read_amazon_reviews(p)
    assert log.source == str(p)
    assert cols(log) == {
        "user_id": ["A2SUAM1J3GNN3B", "A14VAT5EAX3D9S"],
        "item_id": ["0000013714", "0000013714"],
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [1393545600, 1363392000],
        "value": [5.0, 4.0],
        "line": [1, 2],
    }


def test_amazon_ratings_csv(tmp_path):
    p = write(tmp_path, "ratings_Beauty.csv",
              "A39HTATAQ9V7YF,0205616461,5.0,1369699200\nA3JM6GV9MNOF9X,0558925278,3.0,1355443200\n")
    assert cols(read_amazon_reviews(p)) == {
        "user_id": ["A39HTATAQ9V7YF", "A3JM6GV9MNOF9X"],
        "item_id": ["0205616461", "0558925278"],
        "behavior": [DEFAULT_BEHAVIOR] * 2,
        "timestamp": [1369699200, 1355443200],
        "value": [5.0, 3.0],
        "line": [1, 2],
    }
    p18 = write(tmp_path, "Beauty.csv.gz", "0205616461,A39HTATAQ9V7YF,5.0,1369699200\n")
    log = read_amazon_reviews(p18, item_first=True)
    assert (cols(log)["user_id"], cols(log)["item_id"]) == (["A39HTATAQ9V7YF"], ["0205616461"])


# ============================================================================= sequences / pairs
def test_sequences(tmp_path):
    p = write(tmp_path, "Beauty.txt", "1 1 2 3\n2 4\n\n3 2 5\n")
    assert cols(read_sequences(p)) == {
        "user_id": ["1", "1", "1", "2", "3", "3"],
        "item_id": ["1", "2", "3", "4", "2", "5"],
        "behavior": [DEFAULT_BEHAVIOR] * 6,
        "timestamp": [0, 1, 2, 3, 4, 5],
        "value": [None] * 6,
        "line": [1, 1, 1, 2, 4, 4],
    }


def test_sequences_gz_and_string_items(tmp_path):
    p = write(tmp_path, "LastFM.txt.gz", "u1\tartist-a\tartist-b\n")
    log = read_sequences(p)
    assert cols(log)["item_id"] == ["artist-a", "artist-b"]
    assert log.source == str(p)


def test_pairs(tmp_path):
    p = write(tmp_path, "ml-1m.txt", "1 10\n1 11\n\n2 10\n2  12\n")
    assert cols(read_pairs(p)) == {
        "user_id": ["1", "1", "2", "2"],
        "item_id": ["10", "11", "10", "12"],
        "behavior": [DEFAULT_BEHAVIOR] * 4,
        "timestamp": [0, 1, 2, 3],
        "value": [None] * 4,
        "line": [1, 2, 4, 5],
    }


# ============================================================================= read_events
def test_read_events_dispatch(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    udata = write(d, "u.data", "1\t2\t3\t4\n")
    assert cols(read_events(udata))["value"] == [3.0]
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\ta\n")
    assert cols(read_events(inter))["line"] == [2]
    table = write(tmp_path, "t.csv", "a,b\nu,i\n")
    log = read_events(table, columns={"user_id": "a", "item_id": "b"})
    assert cols(log)["item_id"] == ["i"]
    seq = write(tmp_path, "Beauty.txt", "u a b\n")
    assert cols(read_events(seq, fmt="sequences"))["item_id"] == ["a", "b"]
    pairs = write(tmp_path, "ml-1m.txt", "u a\n")
    assert cols(read_events(pairs, "pairs"))["item_id"] == ["a"]
    with pytest.raises(RecipeError, match="unknown event format 'excel'"):
        read_events(seq, fmt="excel")
    with pytest.raises(RecipeError, match="unexpected keyword argument"):
        read_events(seq, fmt="sequences", columns={})


# ============================================================================= bad input
@pytest.mark.parametrize("reader", [read_table, read_movielens, read_recbole_inter,
                                    read_amazon_reviews, read_sequences, read_pairs,
                                    read_events])
def test_missing_file(tmp_path, reader):
    p = tmp_path / "nope.csv"
    with pytest.raises(DataError) as err:
        reader(p)
    assert str(err.value) == f"{p}: file not found"
    assert err.value.line is None and err.value.field is None


# ---- one bad row or field: (file name, content, reader, line, field, what the message says)
JSON_OK = '{"reviewerID": "A", "asin": "1", "unixReviewTime": 1, "overall": 5}\n'
BAD_FILES = [
    # malformed rows
    ("u.data", "1\t2\t3\t4\n\n1\t2\t3\n", read_movielens, 3, "timestamp",
     r"3 fields on this row, expected 4 tab-separated fields"),
    ("u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n", read_movielens, 2, "timestamp", r"5 fields on this row, expected 4"),
    ("u.data", "1\t2\t3\t4\t5\n1\t2\t3\t4\n", read_movielens, 1, "timestamp", r"5 fields on this row"),
    ("ratings.dat", "1::2::3::4\n1::2::3\n", read_movielens, 2, "timestamp",
     r"3 fields on this row, expected 4 '::'-separated fields"),
    ("ratings.dat", "1::2::3::4\n1::2::3::4::5\n", read_movielens, 2, "timestamp", r"5 fields on this row"),
    ("ratings.dat", "1::2::3::4\n1::2:5::3::4\n", read_movielens, 2, "item_id", r"stray ':' in '2:5'"),
    ("ml-1m.txt", "1 10\n1\n", read_pairs, 2, "item_id", r"1 fields on this row, expected 2 whitespace-separated fields"),
    ("ml-1m.txt", "1 10\n1 11 12\n", read_pairs, 2, "item_id", r"3 fields on this row"),
    ("log.csv", "user_id,item_id\nu,a\nu,b,c\n", read_table, 3, "item_id",
     r"3 fields on this row, expected 2 \(the header has 2\)"),
    ("reviews.json", JSON_OK + '\n{"reviewerID": "B", "asin": \n', read_amazon_reviews, 3, None, "not valid JSON"),
    ("list.jsonl", '{"user_id": "a", "item_id": "b"}\n[1, 2]\n', read_table, 2, None,
     "expected a JSON object, found list"),
    ("Beauty.txt", "1 1 2\n2\n3 4\n", read_sequences, 2, "item_id", r"user '2' has no items"),
    # columns the mapping needs
    ("log.csv", "user,item_id\nu,a\n", read_table, 1, "user_id",
     r"no column named 'user_id'; the file has columns 'user', 'item_id'"),
    ("reviews.jsonl", '\n{"user": "A", "asin": "1"}\n', read_amazon_reviews, 2, "user_id",
     r"no record has the key 'reviewerID'; the first record has keys 'user', 'asin'"),
    # timestamps
    ("log.csv", "user_id,item_id,timestamp\nu,a,5\nu,b,yesterday\n", read_table, 3, "timestamp",
     r"cannot read 'yesterday' as a timestamp"),
    ("u.data", "1\t2\t3\t4\n1\t2\t3\t4\n1\t2\t3\tx9\n", read_movielens, 3, "timestamp", ""),
    ("log.csv", "user_id,item_id,timestamp\nu,a,5\nu,b,5.5\n", read_table, 3, "timestamp",
     r"timestamp '5\.5' is not a whole number of seconds"),
    ("r.jsonl", '{"reviewerID": "A", "asin": "1", "unixReviewTime": "?", "overall": 1}\n', read_amazon_reviews,
     1, "timestamp", r".*\(column 'unixReviewTime'\)$"),
    ("log.csv", "user_id,item_id,timestamp\nu,a,5\nu,b,\n", read_table, 3, "timestamp", "missing timestamp"),
    # missing ids, bad values
    ("log.csv", "user_id,item_id\nu,a\n\nu,\n", read_table, 4, "item_id", "missing value"),
    ("log.tsv", "user_id\titem_id\n\tb\n", read_table, 2, "user_id", "missing value"),
    ("u.data", "1\t2\t3\t4\n1\t\t3\t4\n", read_movielens, 2, "item_id", "missing value"),
    ("r.json", JSON_OK + '{"asin": "2", "unixReviewTime": 2, "overall": 5}\n', read_amazon_reviews, 2, "user_id",
     r"missing value.*\(column 'reviewerID'\)"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,five,3\n", read_movielens, 2, "value",
     r"not a number: 'five' \(column 'rating'\)"),
]


@pytest.mark.parametrize("name,text,reader,line,field,says", BAD_FILES,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_FILES)])
def test_bad_row_is_located(tmp_path, name, text, reader, line, field, says):
    """Each bad file is refused with one DataError naming the file, the line and the field."""
    p = write(tmp_path, name, text)
    with pytest.raises(DataError, match=where(p, line, field) + says):
        reader(p)


def test_fractional_timestamp_truncated_in_recbole(tmp_path):
    q = write(tmp_path, "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t5.9\n")
    assert cols(read_recbole_inter(q))["timestamp"] == [5]


# ---- wrong column mapping
def test_csv_mapped_column_not_in_file(tmp_path):
    p = write(tmp_path, "reviews.csv", "reviewerID,asin,time\nA,1,5\n")
    with pytest.raises(DataError, match=where(p, 1, "timestamp") + r"column 'unixReviewTime' "
                       r"not found; the file has columns 'reviewerID', 'asin', 'time'"):
        read_table(p, columns={"user_id": "reviewerID", "item_id": "asin",
                               "timestamp": "unixReviewTime"})


def test_parquet_mapped_column_missing(tmp_path):
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"u": ["a"], "i": ["b"]}), p)
    with pytest.raises(DataError, match=re.escape(f"{p}: field 'item_id': column 'item' not "
                                                  f"found; the file has columns 'u', 'i'")):
        read_table(p, columns={"user_id": "u", "item_id": "item"})


def test_mapping_must_name_user_and_item(tmp_path):
    p = write(tmp_path, "log.csv", "a,b\n1,2\n")
    with pytest.raises(RecipeError, match="must name 'item_id'"):
        read_table(p, columns={"user_id": "a"})
    with pytest.raises(RecipeError, match="unknown field.*'rating'"):
        read_table(p, columns={"user_id": "a", "item_id": "b", "rating": "c"})


# ---- empty logs
@pytest.mark.parametrize("name,text,reader", [
    ("empty.csv", "", read_table),
    ("header.csv", "user_id,item_id\n", read_table),
    ("header_blank.csv", "user_id,item_id\n\n\n", read_table),
    ("u.data", "", read_movielens),
    ("u.data.gz", "\n\n", read_movielens),
    ("ratings.dat", "", read_movielens),
    ("ratings.csv", "userId,movieId,rating,timestamp\n", read_movielens),
    ("x.inter", "user_id:token\titem_id:token\n", read_recbole_inter),
    ("reviews.json", "\n \n", read_amazon_reviews),
    ("ratings.csv", "", read_amazon_reviews),
    ("Beauty.txt", "\n\n", read_sequences),
    ("ml-1m.txt", "", read_pairs),
    ("e.jsonl", "", read_table),
])
def test_empty_log(tmp_path, name, text, reader):
    p = write(tmp_path, name, text)
    with pytest.raises(DataError, match=where(p) + "empty log"):
        reader(p)


def test_empty_parquet(tmp_path):
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()),
                             "item_id": pa.array([], pa.string())}), p)
    with pytest.raises(DataError, match=where(p) + "empty log"):
        read_table(p)


# ---- files that cannot be read
def test_corrupt_gzip(tmp_path):
    p = tmp_path / "u.data.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=where(p) + "cannot"):
        read_movielens(p)


def test_bad_utf8_names_line(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"user_id,item_id\nu,a\nu,\xff\n")
    with pytest.raises(DataError, match=where(p, 3) + "not valid UTF-8"):
        read_table(p)


@pytest.mark.parametrize("text,line,field,says", [
    ("user_id,item_id,time\n1,a,5\n", 1, "timestamp", "no column named 'timestamp', but the file has 'time'"),
    ("user_id,item_id,timestamp\n1,a,1511544070000\n1,b,1511544071000\n", 2, "timestamp", "looks like milliseconds"),
    ("user_id,item_id,timestamp\n1,a,1511544070\n1,b,1511544071000\n", 3, "timestamp", "mixed time units"),
    ("user_id,item_id,timestamp\n1,a,5\n1,b c,6\n", 3, "item_id", "contains whitespace"),
    ("user_id,item_id,timestamp\n1,a,5\n1,b\x00c,6\n", 3, "item_id", "control character"),
    ("user_id,item_id,timestamp\n1,a,5\n1," + "x" * 1_000_001 + ",6\n", 3, "item_id", "1,000,001 characters"),
])
def test_silent_input_becomes_a_decision(tmp_path, text, line, field, says):
    """What used to pass silently (file order as time, ms as s, mixed units, broken ids) is one
    line naming the file, the line and the field."""
    p = write(tmp_path, "log.csv", text)
    with pytest.raises(DataError) as err:
        read_table(p)
    assert f"log.csv:{line}: field '{field}':" in str(err.value) and says in str(err.value), str(err.value)


def test_explicit_mapping_without_timestamp_uses_file_order(tmp_path):
    p = write(tmp_path, "log.csv", "user_id,item_id,time\n1,a,9\n1,b,5\n")
    log = read_table(p, columns={"user_id": "user_id", "item_id": "item_id"})
    assert cols(log)["timestamp"] == [0, 1]


def test_unknown_suffix_names_the_recipe_key_and_guesses_the_format(tmp_path):
    p = write(tmp_path, "seqs.txt", "1 10 11 12\n2 11 13 14\n")
    with pytest.raises(DataError) as err:
        read_events(p)
    msg = str(err.value)
    assert "recipe key data_format" in msg and "looks like data_format: sequences" in msg and "fmt=" not in msg
    assert cols(read_events(p, fmt="sequences"))["item_id"][:3] == ["10", "11", "12"]
    csv = write(tmp_path, "log.txt", "user_id,item_id,timestamp\n1,a,5\n1,b,6\n")
    with pytest.raises(DataError, match="looks like data_format: csv"):
        read_events(csv)
    assert cols(read_events(csv, fmt="csv"))["item_id"] == ["a", "b"]      # data_format: csv


def test_a_registered_format_is_dispatched_and_claims_its_files(tmp_path):
    """A new format is a reader and one register_format call: read_events dispatches on its name,
    and on file names it claims."""
    from behavior_lm.data import readers

    def read_bar(path):
        return read_table(path, fmt="csv", sep="|")

    readers.register_format(readers.EventFormat("bar", read_bar, lambda name: name.endswith(".bar")))
    try:
        p = write(tmp_path, "log.bar", "user_id|item_id\nu|a\nu|b\n")
        assert cols(read_events(p))["item_id"] == ["a", "b"]
        assert cols(read_events(p, fmt="bar"))["user_id"] == ["u", "u"]
        assert "bar" in readers.EVENT_FORMATS
    finally:
        readers.FORMATS.pop("bar")
        readers.EVENT_FORMATS = tuple(readers.FORMATS)


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Read every header CSV/TSV in chunks of 7 rows (large files are read 500k rows at a time)."""
    from behavior_lm.data.readers import delimited

    monkeypatch.setattr(delimited, "CHUNK_MIN_BYTES", 0)
    monkeypatch.setattr(delimited, "CHUNK_ROWS", 7)
    return delimited


def _whole(path, **kwargs):
    from behavior_lm.data.readers import delimited

    saved = delimited.CHUNK_MIN_BYTES
    delimited.CHUNK_MIN_BYTES = 1 << 62
    try:
        return read_events(path, **kwargs)
    finally:
        delimited.CHUNK_MIN_BYTES = saved


@pytest.mark.parametrize("with_time", [True, False])
def test_chunked_csv_equals_the_whole_file_read(tmp_path, tiny_chunks, with_time):
    """Same table (lines, file-order time without a timestamp column, blank rows dropped,
    behavior map) whether a file is read whole or in chunks."""
    rows = ["user_id,item_id,behavior" + (",timestamp" if with_time else "")]
    for n in range(40):
        rows.append(f"u{n % 6},i{n % 9},{'click' if n % 3 else 'order'}" + (f",{1000 + n}" if with_time else ""))
        if n % 11 == 5:
            rows.append("")
    p = tmp_path / "log.csv"
    p.write_text("\n".join(rows) + "\n")
    kwargs = {"behavior_map": {"click": "pv", "order": "buy"}}
    chunked = read_events(p, **kwargs)
    whole = _whole(p, **kwargs)
    assert chunked.table.equals(whole.table) and len(chunked) == 40


def test_chunked_csv_errors_name_the_line(tmp_path, tiny_chunks):
    good = [f"u{n},i{n},{1000 + n}" for n in range(30)]
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(["user_id,item_id,timestamp", *good[:20], "u1,i1,soon", *good[20:]]) + "\n")
    with pytest.raises(DataError, match="bad.csv:22.*timestamp"):
        read_events(p)
    p.write_text("\n".join(["user_id,item_id,timestamp", *good[:20], "u1,i1,5,extra", *good[20:]]) + "\n")
    with pytest.raises(DataError, match="bad.csv:22.*4 fields on this row, expected 3"):
        read_events(p)
    # seconds in the first chunks, milliseconds in a later one: refused as mixed units
    ms = [f"u{n},i{n},{1_600_000_000_000 + n}" for n in range(10)]
    p.write_text("\n".join(["user_id,item_id,timestamp", *good, *ms]) + "\n")
    with pytest.raises(DataError, match="bad.csv:32.*mixed time units"):
        read_events(p)


def test_quoted_csv_is_read_whole(tmp_path, tiny_chunks):
    """A record may span lines inside quotes: such files keep the whole-file reader, whose line
    numbers follow records."""
    p = tmp_path / "quoted.csv"
    p.write_text('user_id,item_id,timestamp\nu1,"i1",1\nu1,i2,2\n')
    assert not tiny_chunks.chunks_apply(p, ",", True)
    assert len(read_events(p)) == 2
