"""The drift report as a self-contained HTML page (Jinja2, autoescaped, no external assets)."""
from __future__ import annotations

from jinja2 import Environment

from assurexray import NOT_FOR_CLINICAL_USE

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AssureXRay drift report</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}
.drift{background:#fdd}.notice{background:#fff3cd;padding:.5em;border:1px solid #e0c060}</style>
</head><body>
<p class="notice"><strong>{{ notice }}</strong></p>
<h1>Drift report</h1>
{% if r.drift is none %}<p>{{ r.note }}</p>{% else %}
<p>Window of <b>{{ r.n }}</b> inputs against <b>{{ r.reference_n }}</b> training images.
Verdict: <b>{{ "DRIFT" if r.drift else "no drift" }}</b>
{% if r.drift %}({{ r.drifted | join(", ") }}){% endif %}.
{{ r.tests }} tests at alpha {{ r.alpha }} together (weighted Bonferroni: the embedding test at
{{ "%.4f" % r.levels.embedding }}, each image statistic at {{ "%.5f" % r.levels.ks }}).</p>
<h2>Embedding drift</h2>
<p>{{ r.embedding.test }}: MMD&sup2; {{ "%.4f" % r.embedding.mmd2 }},
p = {{ "%.4f" % r.embedding.p_value }} ({{ r.embedding.permutations }} permutations, against
{{ r.embedding.reference_n }} validation images):
<b>{{ "drift" if r.embedding.drift else "no drift" }}</b>.</p>
<h2>Image statistics</h2>
<table><tr><th>statistic</th><th>reference median</th><th>window median</th><th>PSI</th>
<th>PSI band</th><th>KS</th><th>p-value</th><th>verdict</th></tr>
{% for name, f in r.features.items() %}<tr class="{{ 'drift' if f.drift else '' }}">
<th>{{ name }}</th><td>{{ "%.3g" % f.reference_median }}</td><td>{{ "%.3g" % f.window_median }}</td>
<td>{{ "%.3f" % f.psi }}</td><td>{{ f.psi_band }}</td><td>{{ "%.3f" % f.ks }}</td>
<td>{{ "%.4f" % f.p_value }}</td><td>{{ "drift" if f.drift else "ok" }}</td></tr>
{% endfor %}</table>{% endif %}
</body></html>
"""
_TEMPLATE = Environment(autoescape=True).from_string(TEMPLATE)


def render_drift_html(report: dict) -> str:
    return _TEMPLATE.render(r=report, notice=NOT_FOR_CLINICAL_USE)
