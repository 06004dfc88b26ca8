"""Checks the files one demo run wrote: the JSON layout the README documents
(accuracies as fractions, step times in milliseconds) and a well-formed SVG
with both losses drawn.

    python3 scripts/demo-smoke.py RESULT.json RESULT.svg
"""

import json
import sys
import xml.dom.minidom

result_json, result_svg = sys.argv[1], sys.argv[2]
with open(result_json) as f:
    data = json.load(f)
assert set(data) == {"ce", "seesaw"}, f"top-level keys: {sorted(data)}"
for loss, entry in data.items():
    assert set(entry) == {"rare", "common", "frequent", "all", "step_ms"}, f"{loss}: {sorted(entry)}"
    for group in ("rare", "common", "frequent", "all"):
        assert 0.0 <= entry[group] <= 1.0, f"{loss}.{group} = {entry[group]} is not a fraction"
    assert entry["step_ms"] > 0.0, f"{loss}.step_ms = {entry['step_ms']}"
doc = xml.dom.minidom.parse(result_svg)
# Each loss has its colour: a line through the bin means and its legend mark,
# and one point per class.
for colour in ("#1F77B4", "#D62728"):
    lines = [l for l in doc.getElementsByTagName("polyline") if l.getAttribute("stroke").upper() == colour]
    assert len(lines) == 2, f"expected a line and a legend mark in {colour}, found {len(lines)}"
    points = [c for c in doc.getElementsByTagName("circle") if c.getAttribute("fill").upper() == colour]
    assert len(points) == 1203, f"expected one {colour} point per class, found {len(points)}"
print(f"demo output ok: {result_json}, {result_svg}")
