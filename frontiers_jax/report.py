"""One self-contained HTML page: text, tables and figures inlined as base64 PNG."""

import base64
import dataclasses
import datetime
import html
import os
from typing import Sequence

import jax


@dataclasses.dataclass
class Section:
  title: str
  paragraphs: Sequence[str] = ()          # plain text, escaped on output
  figures: Sequence[str] = ()             # PNG paths, inlined
  table: Sequence[Sequence[object]] = ()  # first row: headers
  preformatted: Sequence[str] = ()        # text shown as written (e.g. samples)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; color: #333; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.meta { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; white-space: pre-wrap; }
"""


def _cell(value: object) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return html.escape('—' if value is None else str(value))


def _figure(path: str) -> str:
  with open(path, 'rb') as f:
    data = base64.b64encode(f.read()).decode('ascii')
  name = html.escape(os.path.basename(path))
  return f'<img alt="{name}" title="{name}" src="data:image/png;base64,{data}">'


def render(title: str, sections: Sequence[Section], intro: str = '') -> str:
  devices = jax.devices()
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
           f'</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>']
  parts.append(f'<p class="meta">Written {datetime.datetime.now():%Y-%m-%d %H:%M} with '
               f'jax {jax.__version__} on {len(devices)} {devices[0].platform} '
               'device(s).</p>')
  if intro:
    parts.append(f'<p>{html.escape(intro)}</p>')
  for section in sections:
    parts.append(f'<h2>{html.escape(section.title)}</h2>')
    parts += [f'<p>{html.escape(p)}</p>' for p in section.paragraphs if p]
    if section.table:
      header, *rows = section.table
      parts.append('<table><tr>' + ''.join(f'<th>{_cell(h)}</th>' for h in header) + '</tr>')
      parts += ['<tr>' + ''.join(f'<td>{_cell(v)}</td>' for v in row) + '</tr>'
                for row in rows]
      parts.append('</table>')
    parts += [_figure(p) for p in section.figures]
    parts += [f'<pre>{html.escape(text)}</pre>' for text in section.preformatted]
  parts.append('</body></html>')
  return '\n'.join(parts)


def write(path: str, title: str, sections: Sequence[Section], intro: str = '') -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(render(title, sections, intro))
  return path
