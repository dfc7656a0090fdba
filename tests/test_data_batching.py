"""SFT tokenisation, truncation policy, buckets and batch-size-invariant collation, on a byte-level tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from spct_jax.data.batching import Buckets, Example, SFTRecord, batches, collate, tokenize, tokenize_all

OFFSET = 3  # ids 0..2 are pad/eos/bos; byte b is id b + 3


class ByteTokenizer:
    """Bytes as tokens and a toy chat template; encode() adds no special tokens, like most real ones."""

    pad_id, eos_id = 0, 1

    def __init__(self, bos_id: int | None = 2):
        self.bos_id = bos_id

    def encode(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(int(i) - OFFSET for i in ids if i >= OFFSET).decode("utf-8")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        ids = self.encode(self.apply_chat_template(messages, add_generation_prompt))
        return ids if self.bos_id is None else [self.bos_id] + ids


TOK = ByteTokenizer()


def grm_record(uid: str, context: str, responses: list[str], target: str) -> SFTRecord:
    """A GRM-style prompt: instructions, the conversation context (trimmable), then the responses (never cut)."""
    head = "Score each response.\n#### Conversation Context ####\n"
    tail = "\n#### Responses to be Scored ####\n" + "".join(
        f"[The Begin of Response {i + 1}]\n{r}\n[The End of Response {i + 1}]\n" for i, r in enumerate(responses))
    return SFTRecord(uid, [{"role": "user", "content": head + context + tail}], target,
                     trim_span=(len(head), len(head) + len(context)))


def test_layout_and_loss_mask_alignment():
    rec = SFTRecord("a", [{"role": "system", "content": "Be fair."}, {"role": "user", "content": "Rate it."}],
                    "Scores: \\boxed{7}")
    ex = tokenize(rec, TOK, max_len=256)
    assert isinstance(ex, Example)
    prompt = TOK.encode(TOK.apply_chat_template([dict(m) for m in rec.messages]))
    assert ex.input_ids.tolist() == [TOK.bos_id] + prompt + TOK.encode(rec.target) + [TOK.eos_id]
    assert ex.input_ids.dtype == np.int32 and ex.loss_mask.dtype == np.float32
    # mask[t] = 1 exactly for the target tokens and the eos: the tokens predicted from position t - 1.
    assert ex.prompt_len == 1 + len(prompt)
    assert ex.loss_mask[:ex.prompt_len].sum() == 0 and ex.loss_mask[ex.prompt_len:].all()
    assert TOK.decode(ex.input_ids[ex.loss_mask == 1]) == rec.target and ex.input_ids[-1] == TOK.eos_id
    no_bos = tokenize(rec, ByteTokenizer(bos_id=None), max_len=256)
    assert no_bos.input_ids.tolist() == prompt + TOK.encode(rec.target) + [TOK.eos_id]


def test_earliest_turns_go_first_and_system_and_query_stay():
    msgs = [{"role": "system", "content": "S"}]
    for i in range(4):
        msgs += [{"role": "user", "content": f"question {i} " * 3},
                 {"role": "assistant", "content": f"answer {i} " * 3}]
    msgs.append({"role": "user", "content": "final query"})
    full = tokenize(SFTRecord("m", msgs, "T"), TOK, max_len=1000)
    limit = len(full) - 60  # one exchange is 96 tokens (46 user + 50 assistant): dropping one is enough
    ex = tokenize(SFTRecord("m", msgs, "T"), TOK, max_len=limit)
    assert ex.turns_dropped == 2 and len(ex) <= limit
    text = TOK.decode(ex.input_ids[:ex.prompt_len])
    assert text.startswith("<system>S</system><user>question 1") and "question 0" not in text
    assert "final query" in text
    examples, report = tokenize_all([SFTRecord("m", msgs, "T")], TOK, max_len=limit)
    assert report.truncated == {"m": "dropped 2 turns, cut 0 context chars"} and not report.dropped


def test_context_is_cut_from_the_left_as_little_as_possible_and_reported():
    rec = grm_record("g", "".join(f"turn{i:02d} " for i in range(40)), ["Response A text.", "Response B text."],
                     "Response 1 scores 7, Response 2 scores 3.")
    full = tokenize(rec, TOK, max_len=10_000)
    limit = len(full) - 50
    ex = tokenize(rec, TOK, max_len=limit)
    # One byte is one token here, so the least cut fills max_len exactly.
    assert len(ex) == limit and ex.chars_trimmed > 0 and ex.turns_dropped == 0
    text = TOK.decode(ex.input_ids[:ex.prompt_len])
    assert "[...]" in text and "turn39" in text and "turn00" not in text  # the earliest context goes first
    assert "Response A text." in text and "Response B text." in text
    assert tokenize(rec, TOK, max_len=limit - 1).chars_trimmed == ex.chars_trimmed + 1
    _, report = tokenize_all([rec], TOK, max_len=limit)
    assert "g" in report.truncated and f"cut {ex.chars_trimmed} context chars" in report.truncated["g"]


def test_items_that_cannot_fit_are_dropped_and_reported_never_cut():
    long_response = "x" * 300
    rec = grm_record("r", "short context", [long_response, "ok"], "scores")
    long_target = SFTRecord("t", [{"role": "user", "content": "hi"}], "y" * 500)
    ok = SFTRecord("ok", [{"role": "user", "content": "hi"}], "fine")
    examples, report = tokenize_all([rec, long_target, ok], TOK, max_len=200)
    assert [e.uid for e in examples] == ["ok"]
    assert set(report.dropped) == {"r", "t"} and "target alone needs 501 tokens" in report.dropped["t"]
    assert "even after dropping" in report.dropped["r"]


def test_random_records_never_lose_a_response_or_target_silently():
    rng = np.random.default_rng(0)
    records, wanted = [], {}
    for i in range(60):
        ctx = " ".join(f"w{j}" for j in range(int(rng.integers(0, 120))))
        responses = [f"<resp {i}.{k}> " + "r" * int(rng.integers(1, 80)) for k in range(int(rng.integers(1, 4)))]
        target = "critique " * int(rng.integers(1, 20))
        records.append(grm_record(f"u{i}", ctx, responses, target))
        wanted[f"u{i}"] = (responses, target)
    examples, report = tokenize_all(records, TOK, max_len=384)
    kept = {e.uid: e for e in examples}
    assert set(kept) | set(report.dropped) == set(wanted) and not set(kept) & set(report.dropped)
    assert report.dropped and report.truncated  # the corpus exercises both paths
    for uid, ex in kept.items():
        responses, target = wanted[uid]
        text = TOK.decode(ex.input_ids[:ex.prompt_len])
        assert all(r in text for r in responses) and TOK.decode(ex.input_ids[ex.prompt_len:]) == target
        assert (uid in report.truncated) == (ex.chars_trimmed > 0) and len(ex) <= 384


def test_buckets():
    b = Buckets.multiples(max_len=200, step=64)
    assert b.lengths == (64, 128, 192, 200) and b.of(1) == 64 and b.of(64) == 64 and b.of(65) == 128
    assert b.of(200) == 200
    with pytest.raises(ValueError, match="exceeds"):
        b.of(201)
    assert Buckets.powers_of_two(max_len=1024, min_len=128).lengths == (128, 256, 512, 1024)
    with pytest.raises(ValueError):
        Buckets((128, 64))


def test_collate_shapes_padding_and_rows():
    exs, _ = tokenize_all([SFTRecord(f"c{i}", [{"role": "user", "content": "q" * i}], "a" * i) for i in (1, 5)],
                          TOK, max_len=64)
    out = collate(exs, 64, pad_id=TOK.pad_id, rows=4)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "input_ids": ((4, 64), np.int32), "loss_mask": ((4, 64), np.float32), "attention_mask": ((4, 64), np.bool_)}
    L = len(exs[1])
    assert out["attention_mask"][1].tolist() == [1] * L + [0] * (64 - L)
    assert (out["input_ids"][1, L:] == TOK.pad_id).all() and out["loss_mask"][1, L:].sum() == 0
    assert out["attention_mask"][2:].sum() == 0 and out["loss_mask"][2:].sum() == 0
    with pytest.raises(ValueError, match="more than bucket_len"):
        collate(exs, 8)


def test_batches_are_batch_size_invariant():
    rng = np.random.default_rng(1)
    records = [SFTRecord(f"b{i}", [{"role": "user", "content": "q" * int(rng.integers(1, 300))}],
                         "a" * int(rng.integers(1, 40))) for i in range(23)]
    examples, report = tokenize_all(records, TOK, max_len=384)
    assert len(examples) == 23 and not report.dropped
    buckets = Buckets.multiples(max_len=384, step=64)

    def rows_by_uid(batch_size: int) -> dict[str, tuple]:
        rows = {}
        for uids, arrays in batches(examples, batch_size, buckets, pad_id=TOK.pad_id):
            assert arrays["input_ids"].shape[0] == batch_size  # static shapes: partial batches are filled
            for i, uid in enumerate(uids):
                rows[uid] = tuple(arrays[k][i].tobytes() for k in ("input_ids", "loss_mask", "attention_mask"))
        return rows

    reference = rows_by_uid(1)
    assert len(reference) == 23
    for bs in (2, 3, 5, 8, 32):
        assert rows_by_uid(bs) == reference
    for ex in examples:  # and each row is the example collated alone in its own bucket
        alone = collate([ex], buckets.of(len(ex)), pad_id=TOK.pad_id)
        assert reference[ex.uid] == tuple(alone[k][0].tobytes() for k in ("input_ids", "loss_mask", "attention_mask"))
