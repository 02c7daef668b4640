"""The shipped Shakespeare corpus, its deterministic by-work splits, and user corpora."""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
CORPUS_FILE = DATA_DIR / "shakespeare.json.gz"
PROVENANCE_FILE = DATA_DIR / "shakespeare.provenance.json"

# Whole works held out, never a random line split (about 4.5% of the characters each).
VAL_WORKS = ("macbeth", "twelfth_night", "passionate_pilgrim", "phoenix_and_the_turtle")
TEST_WORKS = ("julius_caesar", "tempest", "lovers_complaint")
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def shakespeare() -> dict[str, str]:
    """{work name: cleaned text} for all 42 works, checked against the recorded sha256."""
    expected = json.loads(PROVENANCE_FILE.read_text())["corpus_sha256"]
    raw = CORPUS_FILE.read_bytes()
    if hashlib.sha256(raw).hexdigest() != expected:
        raise RuntimeError(f"{CORPUS_FILE} does not match its recorded sha256; rebuild it with scripts/build_corpus.py")
    return json.loads(gzip.decompress(raw).decode("utf-8"))


def split_works(works: dict[str, str], split: str) -> dict[str, str]:
    """The works of one split. A user corpus (no Shakespeare work names) splits by document order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    names = sorted(works)
    if "__val__" in works:  # one user document cut in three by load_corpus
        val, test = {"__val__"}, {"__test__"}
    elif set(VAL_WORKS + TEST_WORKS) <= set(names):
        val, test = set(VAL_WORKS), set(TEST_WORKS)
    else:
        val, test = _user_holdout(works)
    chosen = {"val": val, "test": test}.get(split)
    if chosen is None:
        chosen = set(names) - val - test
    return {name: works[name] for name in names if name in chosen}


def _user_holdout(works: dict[str, str]) -> tuple[set[str], set[str]]:
    """For a user corpus: the last documents (about 5% each) for val and test; one document is cut in three."""
    names = sorted(works)
    total = sum(len(works[n]) for n in names)
    val: set[str] = set()
    test: set[str] = set()
    acc = 0
    for name in reversed(names):
        if acc < 0.05 * total or not test:
            test.add(name)
        elif acc < 0.10 * total or not val:
            val.add(name)
        else:
            break
        acc += len(works[name])
    return val, test


def load_corpus(path: str | Path | None = None) -> dict[str, str]:
    """The shipped corpus (path None) or a user's text: one .txt file or a folder of .txt files.

    A single document is cut into train (90%), val and test (5% each) at line boundaries, so the
    same split logic applies everywhere.
    """
    if path is None:
        return shakespeare()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"--corpus {path}: the folder holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"--corpus {path}: no such file or folder")
    works = {}
    for file in files:
        raw = file.read_bytes()
        if b"\x00" in raw:
            raise ValueError(f"--corpus {file}: looks binary (contains NUL bytes); give UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"--corpus {file}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        if text.strip():
            works[str(file.relative_to(path) if path.is_dir() else file.name)] = text
    if not works:
        raise ValueError(f"--corpus {path}: the text is empty")
    if len(works) < 3:
        works = _cut_single(works)
    return works


def _cut_single(works: dict[str, str]) -> dict[str, str]:
    text = "".join(works.values())
    lines = text.splitlines(keepends=True)
    if len(lines) < 20:
        raise ValueError(f"--corpus: too little text to split into train/val/test ({len(lines)} lines; need 20+)")
    a, b = int(len(lines) * 0.90), int(len(lines) * 0.95)
    return {"__train__": "".join(lines[:a]), "__val__": "".join(lines[a:b]), "__test__": "".join(lines[b:])}
