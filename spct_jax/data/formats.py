"""Read any supported preference file into PreferenceItems, with every skipped or dropped row accounted for.

Formats (name: what a row looks like; see docs/evaluation.md and the modules in spct_jax/data/readers/):
  rewardbench              {prompt (str | turns), chosen, rejected, subset, id}   -> [chosen, rejected], best 0
  rmb_pairwise             {pair_uid, conversation_input, chosen{answer}, reject{answer}, category_path}
  rmb_bon                  {bon_uid, conversation_input, bon_best{answer}, loser_list[{answer}]} -> best 0
  ppe_human                {question_id, prompt, response_1, response_2, winner}; ties dropped (counted)
  ppe_correctness          {question_id, prompt, response_1..K, scores[K] 0/1, sampled_conflict_pairs}
  helpsteer2               {prompt, response_1, response_2, preference_strength (<0: response_1 better)}; 0 dropped
  ultrafeedback_binarized  {prompt, chosen[turns], rejected[turns], score_chosen, score_rejected}; ties dropped
  ultrafeedback            {instruction, completions[{response, annotations | overall_score}]}
  hh_rlhf                  {chosen, rejected} transcripts in the "\\n\\nHuman: .. \\n\\nAssistant: .." form
  sharegpt_dpo             {conversations[{from, value}], chosen{from, value}, rejected{from, value}}
  llmbar                   {input, output_1, output_2, label 1|2} (LLMBar's own files) -> best = label - 1
  realmistake              {input, llm_response, error_label, metadata{id}} -> one response, reward 1 if no_error
  schema                   PreferenceItem.to_json() rows; `rewards` without a `best` field get best = the
                           unique maximum of the rewards (Eq. 10), a shared maximum is a bad row
  items                    {context (str | turns), responses[, uid, rewards, best]} without `source`: what
                           `spct score --input` reads; uid = the row's location when absent; ground truth optional
  judgebench               {pair_id, source, question, response_A, response_B, label A>B|B>A} -> [A, B], best by label
  rewardbench2             {id, prompt, chosen[], rejected[], num_correct, subset} -> chosen + rejected, rewards 1/0;
                           best 0 (one correct) or None (Ties prompts with several)
  rmbench                  {id, prompt, chosen[3], rejected[3], domain} -> 3 chosen + 3 rejected (concise, detailed,
                           markdown), uid `<domain>:<id>`; domain from the file name in the per-domain files

Policy: a malformed row raises DataError naming `file:line` (`file:[index]` in JSON arrays and parquet) and the
field, before any item is returned. With on_error="skip" the row is left out and listed in the ReadReport.
A duplicate uid within one source is a malformed row (uids are the sources' own ids, so a RewardBench id may
equal an RMB pair_uid). Ties, and other well-formed rows that cannot supervise a unique best, are dropped by
policy and counted in `ReadReport.dropped`. Formats without ids get the row's location as uid.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import Iterable, Literal, Mapping

from spct_jax.data.readers import FORMATS, Drop, Format, Row, detect
from spct_jax.data.readers.files import BadRow, RawRow, is_data_file, read_rows
from spct_jax.data.schema import DataError, PreferenceItem

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
FORMAT_NAMES = tuple(FORMATS)


@dataclasses.dataclass
class ReadReport:
    """What happened to every row of one file: items made, rows skipped as bad (with why), rows dropped by policy."""

    path: str
    format: str | None = None
    rows: int = 0
    items: int = 0
    bad: list[BadRow] = dataclasses.field(default_factory=list)
    dropped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self) -> str:
        parts = [f"{self.path}: {self.format or '?'}, {self.rows} rows -> {self.items} items"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())))
        if self.bad:
            parts.append(f"{len(self.bad)} bad rows skipped")
        return "; ".join(parts)


def _format_for(path: Path, rows: list[RawRow | BadRow], format: str | None) -> Format | None:
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"{path}: unknown format {format!r} (known: {', '.join(FORMAT_NAMES)})")
        return FORMATS[format]
    first = next((r for r in rows if isinstance(r, RawRow)), None)
    if first is None:
        return None  # empty file, or nothing decodable: the bad rows speak for themselves
    if not isinstance(first.value, Mapping):
        raise DataError(f"{first.loc}: cannot detect the format: the row is a {type(first.value).__name__}, "
                        "not an object")
    found = detect(first.value)
    if found is None:
        raise DataError(f"{first.loc}: cannot detect the format from fields {sorted(first.value)}; "
                        f"pass format= one of {', '.join(FORMAT_NAMES)}")
    return found


def _strip_loc(loc: str, message: str) -> str:
    return message[len(loc) + 2:] if message.startswith(loc + ": ") else message


def _fallback_uid(path: Path, uid_base: str, loc: str) -> str:
    return f"{uid_base}:{loc[len(str(path)) + 1:]}"


def read_preferences_with_report(path: str | Path, format: str | None = None, *, on_error: OnError = "raise",
                                 seen_uids: dict[tuple[str, str], str] | None = None, uid_base: str | None = None,
                                 ) -> tuple[list[PreferenceItem], ReadReport]:
    """Read one file.

    seen_uids: (source, uid) -> location, of items already read from other files; duplicates are bad rows.
        Uids are the sources' own ids, so they are unique per source, not across sources.
    uid_base: for formats without ids the uid is `<uid_base>:<line>`; default the file name (a folder reader
        passes the path relative to the folder, so same-named files in different subfolders stay distinct).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    rows = read_rows(path)
    report = ReadReport(path=str(path), rows=len(rows))
    if on_error == "raise":  # an undecodable row before the one detection reads is the first error in file order
        for r in rows:
            if isinstance(r, BadRow):
                raise DataError(f"{r.loc}: {r.reason}")
            break
    fmt = _format_for(path, rows, format)
    report.format = fmt.name if fmt else format
    seen = {} if seen_uids is None else seen_uids
    new_uids: dict[tuple[str, str], str] = {}
    items: list[PreferenceItem] = []

    def bad(loc: str, reason: str) -> None:
        if on_error == "raise":
            raise DataError(f"{loc}: {reason}")
        report.bad.append(BadRow(loc, reason))

    for r in rows:
        if isinstance(r, BadRow):
            bad(r.loc, r.reason)
            continue
        assert fmt is not None  # a RawRow exists, so detection ran or raised
        if not isinstance(r.value, Mapping):
            bad(r.loc, f"expected a JSON object, got {type(r.value).__name__}")
            continue
        try:
            out = fmt.convert(Row(r.value, r.loc), _fallback_uid(path, uid_base or path.name, r.loc))
        except DataError as e:
            bad(r.loc, _strip_loc(r.loc, str(e)))
            continue
        except (KeyError, TypeError, IndexError, AttributeError) as e:  # a shape no check anticipated
            bad(r.loc, f"malformed row ({type(e).__name__}: {e})")
            continue
        if isinstance(out, Drop):
            report.dropped[out.reason] += 1
            continue
        key = (out.source, out.uid)
        first = new_uids.get(key) or seen.get(key)
        if first is not None:
            bad(r.loc, f"field '{fmt.uid_field or 'uid'}': duplicate uid {out.uid!r} (first at {first})")
            continue
        new_uids[key] = r.loc
        items.append(out)
    seen.update(new_uids)  # only after the whole file is read: a raise leaves the caller's state untouched
    report.items = len(items)
    return items, report


def read_preferences(path: str | Path, format: str | None = None, *, on_error: OnError = "raise",
                     ) -> list[PreferenceItem]:
    """Read one file; with on_error="skip" the skipped rows are logged as a warning (use the _with_report form)."""
    items, report = read_preferences_with_report(path, format, on_error=on_error)
    if report.bad:
        log.warning("%s; first: %s: %s", report.summary(), report.bad[0].loc, report.bad[0].reason)
    elif report.dropped:
        log.info("%s", report.summary())
    return items


def data_files(src: str | Path) -> list[Path]:
    """The preference files under a folder (recursively, sorted), or the file itself."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder")
    return sorted((p for p in src.rglob("*") if is_data_file(p)), key=lambda p: p.relative_to(src).as_posix())


def uid_base_for(src: str | Path, path: Path) -> str:
    """Location uids inside a folder use the path relative to it (`Natural/dataset.json:[3]`)."""
    src = Path(src)
    return path.relative_to(src).as_posix() if src.is_dir() else path.name


def read_folder_with_report(src: str | Path, format: str | None = None, *, on_error: OnError = "raise",
                            ) -> tuple[list[PreferenceItem], list[ReadReport]]:
    """Every preference file under `src` in sorted path order; (source, uid) must be unique across all of them."""
    seen: dict[tuple[str, str], str] = {}
    items: list[PreferenceItem] = []
    reports: list[ReadReport] = []
    for p in data_files(src):
        got, rep = read_preferences_with_report(p, format, on_error=on_error, seen_uids=seen,
                                                uid_base=uid_base_for(src, p))
        items += got
        reports.append(rep)
    return items, reports


def count_by_subset(items: Iterable[PreferenceItem]) -> collections.Counter[tuple[str, str]]:
    """(source, subset) -> items; subset is meta["subset"] or "-"."""
    return collections.Counter((it.source, str(it.meta.get("subset", "-"))) for it in items)
