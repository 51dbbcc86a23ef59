"""A self-contained HTML gallery of a batch: works offline from file://, no CDN, no fonts, no
external scripts. Every piece of text from a manifest or the API is escaped.

Reference images are remote URLs: the page does not fetch them unless the reader ticks
"show reference thumbnails" (remembered in the browser for next time), so opening it offline
makes no failing requests and leaks nothing to the image hosts.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from ..errors import OutputStoreError
from ..ledger import Figures, Ledger
from ..outputs import mismatches, probe
from ..outputs.bucket import ClipStores, is_bucket_address, names_clip
from ..references import is_local_address
from ..states import JobState
from ..text import format_credits, format_seconds, iso
from .record import Selection, records

STATE_COLOURS = {"completed": "#1b7f3b", "failed": "#b3261e", "unknown": "#a15c00", "expired": "#6b4fa0",
                 "pending": "#555", "submitted": "#1f5fa8", "rendered": "#1f5fa8", "submitting": "#a15c00"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f4f2;color:#1d1d1b}
header{background:#1d1d1b;color:#fafaf8;padding:16px 24px}
header h1{margin:0 0 8px;font-size:20px}
.figs{display:flex;flex-wrap:wrap;gap:18px}.figs div{min-width:90px}.figs b{display:block;font-size:18px}
.bar{padding:10px 24px;background:#e8e8e4;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px;padding:16px 24px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;overflow:hidden;display:flex;flex-direction:column}
.card video{width:100%;background:#3a3a38;aspect-ratio:16/9}
.noclip{aspect-ratio:16/9;display:flex;align-items:center;justify-content:center;background:#ddd;color:#555;padding:8px;text-align:center}
.body{padding:10px 12px}.prompt{margin:0 0 6px;white-space:pre-wrap;word-break:break-word}
.state{display:inline-block;color:#fff;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600}
.meta{color:#555;font-size:12px}.meta code{font-size:11px}
header .meta{color:#d6d6d0}
.facts{font-size:12px;color:#333}
.mismatch{font-size:12px;color:#8a1c14;background:#fdecea;border-radius:4px;padding:2px 6px;margin:4px 0}
.refs{display:flex;gap:6px;flex-wrap:wrap;margin:6px 0}.refs a{font-size:11px;word-break:break-all}
.refs img,.refs .missing{width:56px;height:56px;object-fit:cover;border-radius:4px;display:none}
.refs .missing{align-items:center;justify-content:center;background:#e8e8e4;color:#555;font-size:10px;text-align:center}
body.thumbs .refs img{display:block}body.thumbs .refs .missing{display:flex}
body.thumbs .refs img.failed{display:none}.refs img.local{display:block}
.simulated{background:#fff3cd;color:#3d2f00;border:1px solid #e0b000;padding:6px 10px;margin:8px 0;font-weight:600}
.error{color:#b3261e;font-size:12px;white-space:pre-wrap;word-break:break-word}
.model{font-size:12px;font-weight:600;color:#1d1d1b}
#compare{padding:16px 24px}
.group{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:10px 12px;margin:0 0 16px}
.group h2{font-size:14px;font-weight:400;margin:0 0 8px;white-space:pre-wrap;word-break:break-word}
.cols{display:grid;grid-auto-flow:column;grid-auto-columns:minmax(280px,1fr);gap:12px;overflow-x:auto}
.col{display:flex;flex-direction:column;gap:12px;min-width:0}
.colhead{font-weight:600;background:#e8e8e4;border-radius:4px;padding:2px 8px}
.none{aspect-ratio:16/9;display:flex;align-items:center;justify-content:center;background:#ddd;color:#444;padding:8px;text-align:center}
.hidden{display:none}
.pick{margin-right:4px}.card.rejected{opacity:.55}.rejected-tag{font-size:12px;font-weight:600;color:#8a1c14}
#command{font:12px monospace;width:28em}
"""

SCRIPT = """
(function(){
  var state=document.getElementById('f-state'), row=document.getElementById('f-row'),
      model=document.getElementById('f-model'), compare=document.getElementById('f-compare'),
      thumbs=document.getElementById('f-thumbs'), shown=document.getElementById('shown'),
      main=document.getElementById('cards'), section=document.getElementById('compare'),
      cards=[].slice.call(document.querySelectorAll('.card'));
  function apply(){
    var n=0;
    cards.forEach(function(c){
      var ok=(!state.value||c.dataset.state===state.value)&&(!row.value||c.dataset.row===row.value)&&
             (!model.value||c.dataset.model===model.value);
      c.classList.toggle('hidden',!ok); if(ok){n++;}
    });
    shown.textContent=n;
    if(!section){return;}
    // compare view: a model the filter leaves out loses its column; a group with no card shown goes
    section.querySelectorAll('.col').forEach(function(col){
      col.classList.toggle('hidden',!!model.value&&col.dataset.model!==model.value);
    });
    section.querySelectorAll('.group').forEach(function(g){
      g.classList.toggle('hidden',!g.querySelector('.card:not(.hidden)'));
    });
  }
  function arrange(){
    // the same card elements, moved: into their (prompt, seed) group's model column, or back in order
    cards.forEach(function(c){
      if(compare.checked){
        section.querySelector('.group[data-group="'+c.dataset.group+'"] .col[data-model="'+
                              CSS.escape(c.dataset.model)+'"]').appendChild(c);
      }else{main.appendChild(c);}
    });
    section.classList.toggle('hidden',!compare.checked); main.classList.toggle('hidden',compare.checked);
    apply();
  }
  state.addEventListener('change',apply); row.addEventListener('change',apply);
  model.addEventListener('change',apply);
  if(compare){compare.addEventListener('change',arrange);}
  document.querySelectorAll('.refs img').forEach(function(i){
    i.addEventListener('error',function(){
      // a clean placeholder instead of a broken-image icon with wrapped alt text
      i.classList.add('failed');
      var m=document.createElement('span'); m.className='missing'; m.textContent='not available';
      i.parentNode.insertBefore(m,i);
    });
  });
  function showThumbs(){
    if(thumbs.checked){document.querySelectorAll('.refs img[data-src]').forEach(function(i){i.src=i.dataset.src;});}
    document.body.classList.toggle('thumbs',thumbs.checked);
  }
  var KEY='batcher-report-thumbnails';
  try{thumbs.checked=localStorage.getItem(KEY)==='1';}catch(e){}
  thumbs.addEventListener('change',function(){
    try{localStorage.setItem(KEY,thumbs.checked?'1':'0');}catch(e){}
    showThumbs();
  });
  showThumbs();
  apply();
  // curation: the ticked clips' keys in a `batcher reject` or `reroll` command, to copy (no server)
  var picked=document.getElementById('picked'), command=document.getElementById('command');
  function ticked(){
    return [].slice.call(document.querySelectorAll('.pick:checked')).map(function(b){return b.value;});
  }
  document.querySelectorAll('.pick').forEach(function(b){
    b.addEventListener('change',function(){picked.textContent=ticked().length;});
  });
  function copy(verb){
    var keys=ticked(); if(!keys.length){command.value='tick clips first';return;}
    command.value='batcher '+verb+' '+keys.join(' ')+document.body.dataset.commandTail;
    command.select();
    if(navigator.clipboard){navigator.clipboard.writeText(command.value).catch(function(){document.execCommand('copy');});}
    else{document.execCommand('copy');}
  }
  document.getElementById('copy-reject').addEventListener('click',function(){copy('reject');});
  document.getElementById('copy-reroll').addEventListener('click',function(){copy('reroll');});
})();
"""


# How long the gallery's presigned clip URLs work by default: a week, the longest S3 allows.
PRESIGN_SECONDS = 7 * 86400.0

SIMULATED_BANNER = ('<div class="simulated">SIMULATED: these clips come from batcher\'s built-in simulator '
                    '(--simulate), not from real renders.</div>')


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _credits(value: float | Decimal | None) -> str:
    return "none" if value is None else format_credits(value)


def build_report(ledger: Ledger, batch: str, out_path: Path, local_files: Mapping[str, Path] | None = None,
                 model: str | None = None, presign: float = PRESIGN_SECONDS, *, orphans: bool = False) -> int:
    """Write the gallery of `batch` to `out_path`; returns the number of cards. Local references
    are shown from their files (`local_files`, content address -> file; default: where the
    ledger last found each), with no network. With `model`, only that model's jobs (and figures).
    Clips in an output store play from presigned URLs that work for `presign` seconds."""
    if local_files is None:
        local_files = {address: Path(image.path) for address, image in ledger.local_images(any_host=True).items()}
    f = ledger.figures(batch, model=model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    # The cards go to a file as they are made (a batch of 100,000 jobs held them all in memory,
    # 364 MB); the filters above them, which count them, are written once they are all known.
    body = out_path.with_name(f".{out_path.name}.cards.tmp")
    try:
        with body.open("w", encoding="utf-8") as cards_out:
            cards = _Cards(out_path.resolve().parent, local_files or {}, cards_out, presign)
            # Rejected clips too (marked): the gallery is where they are judged.
            for record in records(ledger, batch, model, Selection(model, include_rejected=True, facts=False,
                                                                  orphans=orphans)):
                cards.add(record)
        _write_page(tmp, body, cards, _head(batch, cards, f, model, ledger.display))
        os.replace(tmp, out_path)
    finally:
        body.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return cards.count


def _head(batch: str, cards: _Cards, f: Figures, model: str | None, display: str) -> str:
    """The page up to its cards: the batch's figures and the filters, which count the cards."""
    info, counts, spend, avg = f.batch, f.counts, f.spend, f.average_render
    first, last = f.first_submitted, f.last_finished
    wall = f"{last - first:,.0f} s" if first and last and last > first else "n/a"
    figures: list[tuple[str, int | str]] = [("jobs", sum(counts.values()))]
    figures += [(s.value, counts[s.value]) for s in JobState if counts[s.value]]
    figures += [("credits spent", _credits(spend.spent)),
                ("budget", _credits(info.budget if info else None)),
                ("held (unknown)", _credits(spend.held)), ("wall time", wall),
                ("avg render", f"{avg:.1f} s" if avg else "n/a")]
    state_options = "".join(f'<option value="{esc(s.value)}">{esc(s.value)} ({counts[s.value]})</option>'
                            for s in JobState if counts[s.value])
    row_options = "".join(f'<option value="{esc(o)}" title="{esc(o)}">{esc(name)} ({n})</option>'
                          for o, (name, n) in cards.rows.items())
    model_options = "".join(f'<option value="{esc(m)}">{esc(m)} ({n})</option>' for m, n in cards.models.items())
    models = ", ".join(cards.models) or model or (info.model if info else "")
    compare = ('<label><input type="checkbox" id="f-compare"> compare models (the same prompt and seed side by '
               'side)</label>') if len(cards.models) > 1 else ""
    generated = f'<div class="meta">generated {esc(iso(time.time()))} from {esc(display)}</div>'
    if cards.presigned:
        until = esc(iso(int(time.time() + cards.lifetime)))
        generated += (f'<div class="meta">{cards.presigned} clip(s) play from their output store by presigned URLs '
                      f'that work until {until} ({esc(_lifetime(cards.lifetime))}; '
                      '`batcher report --presign` sets it, 7 days at most); '
                      'each URL names the access key id it is signed with</div>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>batcher: {esc(batch)}</title><style>{CSS}</style></head>
<body data-command-tail="{esc(command_tail(batch, display))}">
<header><h1>{esc(batch)} <small>({esc(models)})</small></h1>
<div class="figs">{''.join(f'<div><b>{esc(v)}</b>{esc(k)}</div>' for k, v in figures)}</div>
{SIMULATED_BANNER if info and info.simulated else ''}{generated}
</header>
<div class="bar">
<label>state <select id="f-state"><option value="">all</option>{state_options}</select></label>
<label>row <select id="f-row"><option value="">all</option>{row_options}</select></label>
<label>model <select id="f-model"><option value="">all</option>{model_options}</select></label>
{compare}<label><input type="checkbox" id="f-thumbs"> show reference thumbnails (fetches them from the network)</label>
<span><span id="shown">{cards.count}</span> of {cards.count} shown</span>
{_curation_bar()}
</div>
<main id="cards">
"""


def _lifetime(seconds: float) -> str:
    """How long presigned URLs work, as people say it: 7 days, 36h00m."""
    days = seconds / 86400
    return f"{days:g} day{'s' if days != 1 else ''}" if days.is_integer() else format_seconds(seconds)


def command_tail(batch: str, ledger_display: str) -> str:
    """What follows the keys in a copied command: the batch, and the ledger when it is a file (a
    database URL is shown without its password: the reader's BATCHER_LEDGER names it)."""
    tail = f" --batch {shlex.quote(batch)}"
    return tail if "://" in ledger_display else f"{tail} --ledger {shlex.quote(ledger_display)}"


def _curation_bar() -> str:
    return ('<span><span id="picked">0</span> ticked <button id="copy-reject">copy reject command</button> '
            '<button id="copy-reroll">copy reroll command</button> '
            '<input id="command" readonly aria-label="command to run"></span>')


def _write_page(tmp: Path, body: Path, cards: _Cards, head: str) -> None:
    """The page: its head, the cards as they were written, the compare view and the script."""
    with tmp.open("w", encoding="utf-8") as out, body.open(encoding="utf-8") as made:
        out.write(head)
        shutil.copyfileobj(made, out)
        out.write(f"""
</main>
{cards.compare_section()}
<script>{SCRIPT}</script>
</body></html>
""")


class _Cards:
    """The gallery's cards, with what the filters and the compare view need: rows, models, and
    the groups of cards with the same prompt (after templating) and seed."""

    def __init__(self, base: Path, local_files: Mapping[str, Path], out: IO[str], lifetime: float):
        self.base, self.local_files, self.out = base, local_files, out
        self.lifetime, self.stores, self.presigned = lifetime, ClipStores(), 0
        self.count = 0
        self.rows: dict[str, tuple[str, int]] = {}
        self.models: dict[str, int] = {}
        self.groups: dict[tuple[str, str], tuple[int, set[str]]] = {}  # (prompt, seed) -> (index, models)

    def add(self, record: dict[str, Any]) -> None:
        name, n = self.rows.get(record["origin"], (_row_name(record), 0))
        self.rows[record["origin"]] = (name, n + 1)
        model = str(record.get("model") or "")
        self.models[model] = self.models.get(model, 0) + 1
        key = (str(record.get("prompt") or ""), json.dumps(record.get("seed")))
        index, models = self.groups.setdefault(key, (len(self.groups), set()))
        models.add(model)
        self.out.write(_card(record, self.base, self.local_files, f"g{index}", self._clip_src(record)))
        self.count += 1

    def _clip_src(self, r: dict[str, Any]) -> str | None:
        """Where the page plays a completed clip from: its file, by a path relative to the page,
        or a presigned URL of its object in an output store. None: no clip."""
        if r["state"] != "completed" or not r["file"]:
            return None
        if is_bucket_address(r["file"]):
            if not names_clip(r["file"], str(r["id"])):
                return None  # a location that is no clip of this job: never signed
            try:
                url = self.stores.presign(r["file"], self.lifetime)
            except OutputStoreError:
                return None
            self.presigned += 1
            return url
        return Path(os.path.relpath(r["file"], self.base)).as_posix()

    def compare_section(self) -> str:
        """The compare view's frame, hidden until asked for: one group per (prompt, seed), one
        column per model (a model that did not render it says so); the page's script moves the
        cards into it."""
        if len(self.models) < 2:
            return ""
        out = ['<section id="compare" class="hidden">']
        for (prompt, seed), (index, have) in self.groups.items():
            shown_seed = "no seed" if seed == "null" else f"seed {esc(seed)}"
            out.append(f'<div class="group" data-group="g{index}"><h2>{esc(prompt)} '
                       f'<span class="meta">· {shown_seed} · {len(have)} of {len(self.models)} models</span></h2>'
                       '<div class="cols">')
            for m in self.models:
                none = "" if m in have else '<div class="none">no job of this prompt and seed</div>'
                out.append(f'<div class="col" data-model="{esc(m)}"><div class="colhead">{esc(m)}</div>{none}</div>')
            out.append("</div></div>\n")
        out.append("</section>")
        return "".join(out)


def _row_name(record: dict[str, Any]) -> str:
    """A row as people know it: its label and the start of its prompt (not FILE:LINE)."""
    prompt = " ".join(str(record.get("prompt") or "").split())
    return f"{record['label']}: {prompt[:40]}{'…' if len(prompt) > 40 else ''}"


def _facts(r: dict[str, Any]) -> str:
    """What the downloaded file really is, beside what was asked; a mismatch is flagged."""
    info = probe(Path(r["file"]))
    if info is None:
        return '<div class="mismatch">the file cannot be read as an MP4 video</div>'
    size = f"{info.size / 1e6:.1f} MB" if info.size >= 1e6 else f"{info.size / 1e3:.0f} kB"
    facts = f'<div class="facts">file: {info.seconds:g} s, {info.width}x{info.height}, {size}</div>'
    problems = mismatches(info, r.get("duration"), r.get("resolution"), r.get("aspect_ratio"))
    if problems:
        facts += f'<div class="mismatch">not what was asked: {esc("; ".join(problems))}</div>'
    return facts


def _reference(ref: str, base: Path, local_files: Mapping[str, Path]) -> str:
    """One reference of a card: a URL (its thumbnail fetched only when asked), or a local image
    shown from its file by a relative path (no network), or its content address when unknown."""
    if not is_local_address(ref):
        return (f'<a href="{esc(ref)}" title="{esc(ref)}"><img alt="" data-src="{esc(ref)}">'
                f'{esc(ref.rsplit("/", 1)[-1])}</a>')
    path = local_files.get(ref)
    if path is None or not path.is_file():
        return f'<span title="{esc(ref)}">{esc(str(path) if path else ref[:24])} (local)</span>'
    src = Path(os.path.relpath(path.resolve(), base)).as_posix()
    return f'<a href="{esc(src)}" title="{esc(path)}"><img class="local" alt="" src="{esc(src)}">{esc(path.name)}</a>'


def _card(r: dict[str, Any], base: Path, local_files: Mapping[str, Path], group: str, src: str | None) -> str:
    state = r["state"]
    colour = STATE_COLOURS.get(state, "#555")
    if src is not None:
        # The #t fragment makes the browser decode and show the first frame at load: the page
        # reads at a glance (and in a screenshot) without a tile of black per clip.
        media = (f'<video controls muted preload="metadata" src="{esc(src)}#t=0.05" '
                 f'data-key="{esc(r["id"])}"></video>')
        facts = _facts(r) if not is_bucket_address(r["file"]) else (
            f'<div class="facts">in {esc(r["file"])} ({esc(r.get("size"))} bytes)</div>')
    else:
        media, facts = f'<div class="noclip">{esc(state)}</div>', ""
    refs = "".join(_reference(u, base, local_files) for u in r["reference_urls"] or [])
    params = ", ".join(f"{k} {esc(r[k])}" for k in ("duration", "resolution", "aspect_ratio") if r.get(k))
    seed = f", seed {esc(r['seed'])}" if r.get("seed") is not None else ""
    cost = f", {esc(_credits(r['credit_cost']))} credits" if r.get("credit_cost") is not None else ""
    negative = f'<div class="meta">negative: {esc(r["negative_prompt"])}</div>' if r.get("negative_prompt") else ""
    error = f'<div class="error">{esc(r["error"])}</div>' if r.get("error") else ""
    rejected = " rejected" if r.get("rejected") else ""
    tag = '<span class="rejected-tag">rejected</span> ' if rejected else ""
    return (f'<article class="card{rejected}" data-state="{esc(state)}" data-row="{esc(r["origin"])}" '
            f'data-model="{esc(r.get("model") or "")}" data-group="{esc(group)}">{media}'
            f'<div class="body"><input type="checkbox" class="pick" value="{esc(r["id"])}" '
            f'aria-label="tick {esc(r["id"][:12])}">'
            f'<span class="state" style="background:{colour}">{esc(state)}</span> {tag}'
            f'<span class="model">{esc(r.get("model") or "")}</span> '
            f'<span class="meta">{esc(r["origin"])} · take {esc(r["take"])} · <code>{esc(r["id"][:12])}</code></span>'
            f'<p class="prompt">{esc(r["prompt"])}</p>{negative}<div class="refs">{refs}</div>'
            f'<div class="meta">asked: {params}{seed}{cost}</div>{facts}{error}</div></article>\n')

