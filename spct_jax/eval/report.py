"""The critique viewer: one static, self-contained HTML file (inline CSS and JS, nothing fetched) per eval run.

    python -m spct_jax.eval.report OUT/items.jsonl [-o viewer.html] [--limit N]

Input is the per-item dump `spct eval run` writes (items.jsonl; schema in run.py). Per item the page shows the
full conversation, the responses, every sample's principles, critique, scores, presentation order, parse error,
meta score and kept/dropped mark, and the votes (totals per method@k, the voted best, the ground-truth best).

Everything from the data is HTML-escaped: critiques are model output and routinely contain markup, and a viewer
that ran a `<script>` from a critique would let any judged response script the reader's browser. The page is
plain HTML that reads fine without JS; the small inline script only adds filtering, search and expand-all.

Stable hooks for tests and scripts: `section.item#item-{i}` (data-uid, data-correct "1"/"0"/"", data-failed),
`#item-{i}-response-{r}`, `.sample#item-{i}-sample-{j}`, `pre.principles`, `pre.critique#item-{i}-sample-{j}-critique`,
`table.votes`; the script sets `body[data-ready="1"]` and fills `#shown` once it has run.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}
header{background:#fff;border-bottom:1px solid #ddd;padding:12px 20px;position:sticky;top:0;z-index:1}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:0 0 8px}h3{font-size:13px;margin:12px 0 4px;
text-transform:uppercase;letter-spacing:.04em;color:#555}h4{font-size:12px;margin:6px 0 2px;color:#555}
main{padding:12px 20px}.item{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 16px;padding:12px 16px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;padding:6px 8px;background:#fafafa;border:1px solid #eee;
border-radius:4px;font:12.5px/1.4 ui-monospace,monospace}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.gt{background:#e8f5e9}.voted{font-weight:bold}
.badge{display:inline-block;font-size:11px;padding:0 6px;border-radius:8px;background:#eee;margin-left:6px;
font-weight:normal}.right{background:#c8e6c9}.wrong{background:#ffcdd2}.failed{background:#ffe0b2}
.dropped{background:#e0e0e0}.kept{background:#bbdefb}.turn .role{font-size:11px;color:#777}
.sample{border-left:3px solid #90caf9;padding:4px 0 4px 10px;margin:8px 0}.sample.kept,.sample.failed,
.sample.dropped{background:none}.sample.failed{border-color:#ffb74d}.sample.dropped{border-color:#bdbdbd}
.error{color:#b71c1c;font-size:12px}
.controls{margin-top:6px;font-size:13px}.controls input{width:16em}.muted{color:#777}
"""

_JS = """
(function () {
  var items = Array.prototype.slice.call(document.querySelectorAll("section.item"));
  var filter = document.getElementById("filter"), search = document.getElementById("search");
  var shown = document.getElementById("shown");
  function apply() {
    var f = filter.value, q = search.value.toLowerCase(), n = 0;
    items.forEach(function (el) {
      var ok = f === "all" || (f === "wrong" && el.dataset.correct === "0") ||
               (f === "failed" && Number(el.dataset.failed) > 0);
      if (ok && q) ok = el.dataset.uid.toLowerCase().indexOf(q) >= 0 || el.textContent.toLowerCase().indexOf(q) >= 0;
      el.hidden = !ok;
      if (ok) n += 1;
    });
    shown.textContent = n + " of " + items.length + " items shown";
  }
  filter.addEventListener("change", apply);
  search.addEventListener("input", apply);
  document.getElementById("expand").addEventListener("click", function () {
    var all = document.querySelectorAll("main details"), open = !Array.prototype.every.call(all, function (d) {
      return d.open; });
    Array.prototype.forEach.call(all, function (d) { d.open = open; });
  });
  apply();
  document.body.dataset.ready = "1";
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float | int | None) -> str:
    if x is None:
        return "-"
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _vote_label(v: Mapping[str, Any]) -> str:
    name = {"voting": "Voting", "metarm": "MetaRM"}.get(v["method"], v["method"])
    return f"{name}@{v['k']}" + (f" (k_meta={v['k_meta']})" if v.get("k_meta") is not None else "")


def headline_vote(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The vote an item's verdict uses: MetaRM at the largest k when there is one, else Voting at the largest k."""
    votes = list(row.get("votes") or [])
    if not votes:
        return None
    return max(votes, key=lambda v: (v["k"], v["method"] == "metarm"))


def _verdict(row: Mapping[str, Any]) -> tuple[str, str]:
    """(data-correct value, badge html)."""
    v = headline_vote(row)
    gt = row.get("best")
    if v is None or gt is None:
        return "", ""
    if v["best"] is None:
        return "0", f'<span class="badge wrong">{esc(_vote_label(v))}: no valid sample</span>'
    ok = v["best"] == gt
    word = "right" if ok else "wrong"
    return ("1" if ok else "0"), (f'<span class="badge {word}">{esc(_vote_label(v))}: {word} '
                                  f'(voted {v["best"] + 1}, ground truth {gt + 1})</span>')


def _context(row: Mapping[str, Any]) -> str:
    turns = [f'<div class="turn role-{esc(t["role"])}"><div class="role">{esc(t["role"])}</div>'
             f'<pre>{esc(t["content"])}</pre></div>' for t in row["context"]]
    return '<div class="query"><h3>Query</h3>' + "".join(turns) + "</div>"


def _votes_table(row: Mapping[str, Any], i: int) -> str:
    n = len(row["responses"])
    votes = list(row.get("votes") or [])
    rewards, gt = row.get("rewards"), row.get("best")
    head = "<tr><th>response</th><th>ground truth</th>" + "".join(f"<th>{esc(_vote_label(v))}</th>" for v in votes)
    body = [head + "</tr>"]
    for r in range(n):
        truth = "-" if rewards is None else _num(rewards[r])
        if gt == r:
            truth = "best" if rewards is None else f"{truth} (best)"
        cells = "".join(f'<td class="{"voted" if v["best"] == r else ""}">{_num(v["totals"][r])}</td>' for v in votes)
        body.append(f'<tr class="{"gt" if gt == r else ""}"><td><a href="#item-{i}-response-{r}">{r + 1}</a></td>'
                    f"<td>{esc(truth)}</td>{cells}</tr>")
    best = "".join(f"<td>{'-' if v['best'] is None else v['best'] + 1}</td>" for v in votes)
    body.append(f"<tr><td>voted best</td><td>{'-' if gt is None else gt + 1}</td>{best}</tr>")
    valid = "".join(f"<td>{v['num_valid']}/{v['num_valid'] + v['num_failed']}</td>" for v in votes)
    body.append(f"<tr><td>parsed samples</td><td></td>{valid}</tr>")
    return '<table class="votes">' + "".join(body) + "</table>"


def _responses(row: Mapping[str, Any], i: int) -> str:
    gt = row.get("best")
    parts = ['<div class="responses"><h3>Responses</h3>', _votes_table(row, i)]
    for r, text in enumerate(row["responses"]):
        mark = ' <span class="badge right">ground-truth best</span>' if gt == r else ""
        parts.append(f'<details class="response" id="item-{i}-response-{r}" open><summary>Response {r + 1}{mark}'
                     f"</summary><pre>{esc(text)}</pre></details>")
    return "".join(parts) + "</div>"


def _sample(s: Mapping[str, Any], i: int, j: int, has_meta: bool) -> str:
    if s.get("scores") is None:
        state, mark = "failed", "parse failure"
    elif s.get("kept"):
        state, mark = "kept", "kept"
    else:
        state, mark = "dropped", "dropped by the meta RM"
    order = ", ".join(str(p + 1) for p in s["permutation"])
    scores = "-" if s.get("scores") is None else ", ".join(_num(x) for x in s["scores"])
    head = [f"Sample {j + 1}", f"shown in order [{esc(order)}]", f"scores (original order) [{esc(scores)}]"]
    if has_meta:
        head.append(f"meta score {_num(s.get('meta_score'))}")
    parts = [f'<div class="sample {state}" id="item-{i}-sample-{j}"><div class="sample-head">'
             + " · ".join(head) + f' <span class="badge {state}">{esc(mark)}</span></div>']
    if s.get("error"):
        parts.append(f'<div class="error">parse error: {esc(s["error"])}</div>')
    parts.append(f'<h4>Principles</h4><pre class="principles" id="item-{i}-sample-{j}-principles">'
                 f'{esc(s.get("principles") or "")}</pre>')
    parts.append(f'<h4>Critique</h4><pre class="critique" id="item-{i}-sample-{j}-critique">'
                 f'{esc(s.get("critique") or "")}</pre>')
    parts.append(f'<details class="raw"><summary>raw output</summary><pre>{esc(s.get("text") or "")}</pre></details>')
    return "".join(parts) + "</div>"


def render_item(row: Mapping[str, Any], i: int) -> str:
    samples = list(row.get("samples") or [])
    has_meta = any(s.get("meta_score") is not None for s in samples)
    failed = sum(s.get("scores") is None for s in samples)
    correct, badge = _verdict(row)
    subset = (row.get("meta") or {}).get("subset")
    # A two-order copy says which order it was shown in (eval/orders.py); its responses are listed in that order.
    shown = f"shown {row['order']}" if row.get("order") else None
    tags = "".join(f'<span class="badge">{esc(t)}</span>' for t in (row.get("source"), subset, shown) if t)
    out = [f'<section class="item" id="item-{i}" data-uid="{esc(row["uid"])}" data-correct="{correct}" '
           f'data-failed="{failed}"><h2>{esc(row["uid"])}{tags}{badge}</h2>', _context(row), _responses(row, i),
           f'<div class="samples"><h3>Samples ({len(samples)}, {failed} unparsable)</h3>']
    out += [_sample(s, i, j, has_meta) for j, s in enumerate(samples)]
    return "".join(out) + "</div></section>"


def _results_table(runs: Sequence[Mapping[str, Any]]) -> str:
    keys: list[str] = []
    for r in runs:  # the scores, then a two-order run's position consistency where the scores lack it
        keys += [k for k in (*r.get("scores", {}), *r.get("consistency", {})) if k not in keys]
    if not keys:
        return ""
    rows = ["<tr><th>method</th>" + "".join(f"<th>{esc(k)}</th>" for k in keys) + "</tr>"]
    for r in runs:
        values = {**r.get("consistency", {}), **r.get("scores", {})}
        cells = "".join(f"<td>{100 * values[k]:.2f}</td>" if k in values else "<td>-</td>" for k in keys)
        rows.append(f"<tr><td>{esc(_vote_label(r))}</td>{cells}</tr>")
    return '<table class="results">' + "".join(rows) + "</table>"


def render_report(rows: Sequence[Mapping[str, Any]], *, title: str = "spct eval critiques",
                  subtitle: str = "", runs: Sequence[Mapping[str, Any]] = (), total_items: int | None = None) -> str:
    """The viewer page for item dumps `rows` (items.jsonl rows); `runs` are results.json's scored runs.
    total_items: how many items the run had, when `rows` is only the first part of them."""
    total = len(rows) if total_items is None else total_items
    note = f"{len(rows)} items" if total == len(rows) else f"the first {len(rows)} of {total} items"
    sub = " · ".join(x for x in (subtitle, note) if x)
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{_CSS}</style></head>'
            f'<body><header><h1>{esc(title)}</h1><div class="muted">{esc(sub)}</div>{_results_table(runs)}'
            '<div class="controls">show <select id="filter"><option value="all">all items</option>'
            '<option value="wrong">wrong verdicts</option><option value="failed">with parse failures</option>'
            '</select> <input id="search" type="search" placeholder="filter by uid or text"> '
            '<button id="expand" type="button">expand / collapse all</button> <span id="shown"></span></div>'
            "</header><main>")
    body = "".join(render_item(row, i) for i, row in enumerate(rows))
    return head + body + f"</main><script>{_JS}</script></body></html>\n"


def write_report(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
    """render_report to `path`, atomically (a reader never sees half a page)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # errors="replace": a decoded generation may hold lone surrogates, which UTF-8 cannot encode.
        tmp.write_text(render_report(rows, **kwargs), encoding="utf-8", errors="replace")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spct_jax.eval.report", description=__doc__.split("\n\n")[0])
    p.add_argument("items", help="items.jsonl written by `spct eval run`")
    p.add_argument("-o", "--output", default=None, help="default: viewer.html next to the items file")
    p.add_argument("--limit", type=int, default=None, help="show only the first N items")
    args = p.parse_args(argv)
    src = Path(args.items)
    try:
        with open(src, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        results_path = src.with_name("results.json")
        results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.output) if args.output else src.with_name("viewer.html")
    shown = rows if args.limit is None else rows[: args.limit]
    write_report(out, shown, title=f"spct eval run: {results.get('benchmark', src.parent.name)}",
                 subtitle=str(results.get("model", "")), runs=results.get("runs", ()), total_items=len(rows))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
