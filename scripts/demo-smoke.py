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
lines = doc.getElementsByTagName("polyline")
assert len(lines) == 2, f"expected one line per loss, found {len(lines)}"
assert len(doc.getElementsByTagName("circle")) == 2 * 1203, "expected one point per class and loss"
print(f"demo output ok: {result_json}, {result_svg}")
