"""Reports of ``lgc check``: JUnit XML for CI systems, and one self-contained HTML page for people.

The HTML holds everything inline (images as data URIs, no scripts, no
network), so it can be uploaded as a single CI artifact and opened anywhere.
Plots are drawn with matplotlib.
"""

from __future__ import annotations

import base64
import html
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def write_junit(path: Path, checks, suite: str, seconds: float = 0.0) -> None:
    """One ``testcase`` per check; a failing check carries a ``failure`` with its value and limit."""
    failures = sum(not c.passed for c in checks)
    ts = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0", time=f"{seconds:.1f}")
    for c in checks:
        group, _, metric = c.name.rpartition(".")
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{group or 'bundle'}", name=metric or c.name, time="0")
        if not c.passed:
            ET.SubElement(case, "failure", message=c.line(), type="lgc.check").text = c.line()
        else:
            ET.SubElement(case, "system-out").text = c.line()
    root = ET.Element("testsuites", tests=str(len(checks)), failures=str(failures))
    root.append(ts)
    ET.indent(root)
    Path(path).write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _comparison_figure(case: dict) -> str:
    """Golden, artifact, and |difference| heat map of one case, side by side."""
    import matplotlib.pyplot as plt

    diff = np.abs(case["artifact"] - case["golden"]).mean(axis=-1)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, img, title in ((axes[0], case["golden"], "golden (fp16)"), (axes[1], case["artifact"], f"artifact ({case['psnr_db']:.1f} dB)")):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    im = axes[2].imshow(diff, cmap="inferno", vmin=0, vmax=max(float(diff.max()), 1e-3), interpolation="nearest")
    axes[2].set_title("|difference|", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def _bar_chart(values: dict, title: str, unit: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.4))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4c72b0")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:.3g}", va="center", fontsize=8)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    return _png(fig)


def _quality_vs_steps_chart(q: dict) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, metric, label in ((axes[0], "psnr_db_mean", "PSNR dB (mean)"), (axes[1], "ssim_mean", "SSIM (mean)")):
        for schedule in sorted({r["schedule"] for r in q["rows"]}):
            rows = sorted((r for r in q["rows"] if r["schedule"] == schedule), key=lambda r: r["steps"])
            for kind, style in (("fp32", "-"), ("artifact", "--")):
                ax.plot([r["steps"] for r in rows], [r[kind][metric] for r in rows], style, marker="o", label=f"{schedule}, {kind}")
        ax.set_xlabel("steps")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"quality vs steps against the {q['reference_steps']}-step reference", fontsize=10)
    return _png(fig)


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3}tr.fail td{background:#fde2e2}tr.ok td{background:#e8f6e8}
.verdict{font-size:1.4em;font-weight:bold}.pass{color:#17803d}.failv{color:#b42318}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}.grid figcaption{font-size:12px;max-width:700px}
"""


def write_html(path: Path, result: dict, images: list[dict], passes: dict | None) -> None:
    """The human report: verdict, checks, image grid, latency/size charts, pass report, delegation summary."""
    import matplotlib

    matplotlib.use("Agg")
    checks = result["checks"]
    ok = result["passed"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lgc check {html.escape(result['target'])}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>lgc check: {html.escape(result['target'])} — {html.escape(result['model'])}</h1>",
             f"<p class='verdict {'pass' if ok else 'failv'}'>{'PASSED' if ok else 'FAILED'}: "
             f"{sum(c['passed'] for c in checks)}/{len(checks)} checks hold</p>",
             f"<p>bundle <code>{html.escape(result['bundle'])}</code>, against <code>{html.escape(result['reference'])}</code>, "
             f"policy <code>{html.escape(result['policy'])}</code>"
             + (f", baseline <code>{html.escape(result['baseline'])}</code>" if result.get("baseline") else "") + "</p>"]
    parts.append("<h2>Checks</h2>")
    parts.append(_table(["check", "value", "limit", "result", "detail"],
                        [[c["name"], c["value"], ("≥ " if c["kind"] == "min" else "≤ ") + str(c["limit"]), "ok" if c["passed"] else "FAILED", c["detail"]] for c in checks],
                        ["ok" if c["passed"] else "fail" for c in checks]))
    e2e = result["end_to_end"]
    parts.append("<h2>End to end</h2>")
    parts.append(_table(["PSNR dB min", "PSNR dB mean", "SSIM min", "latency ms (median)", "latency / yardstick", "cases"],
                        [[e2e["psnr_db_min"], e2e["psnr_db_mean"], e2e["ssim_min"], e2e["latency_ms_median"], e2e.get("latency_ratio"), e2e["cases"]]]))
    parts.append("<h2>Images: golden, artifact, difference</h2><div class='grid'>")
    for case in images:
        parts.append(f"<figure><img alt='comparison {html.escape(case['prompt'])}' src='{_comparison_figure(case)}'>"
                     f"<figcaption>“{html.escape(case['prompt'])}”, seed {case['seed']}: {case['psnr_db']:.2f} dB</figcaption></figure>")
    parts.append("</div>")
    comps = result["components"]
    parts.append("<h2>Components</h2><div class='grid'>")
    parts.append(f"<img alt='latency chart' src='{_bar_chart({n: c['latency_ms_median'] or 0 for n, c in comps.items()}, 'latency per call (median)', 'ms')}'>")
    parts.append(f"<img alt='size chart' src='{_bar_chart({n: c['bytes'] / 1024 for n, c in comps.items()}, 'artifact size', 'KiB')}'>")
    parts.append("</div>")
    parts.append(_table(["component", "file", "bytes", "PSNR dB min", "latency ms", "latency / yardstick", "delegates", "ops outside delegate"],
                        [[n, c["file"], f"{c['bytes']:,}", c["psnr_db_min"], c["latency_ms_median"], c.get("latency_ratio"),
                          c.get("delegate_subgraphs", "?"), ", ".join(f"{k} ×{v}" for k, v in (c.get("nondelegated_ops") or {}).items()) or "none"]
                         for n, c in comps.items()]))
    if result.get("quality_vs_steps"):
        q = result["quality_vs_steps"]
        parts.append("<h2>Quality vs steps</h2>")
        parts.append(f"<img alt='quality vs steps' src='{_quality_vs_steps_chart(q)}'>")
        parts.append(_table(["steps", "schedule", "timesteps", "fp32 PSNR mean", "fp32 SSIM mean", "artifact PSNR mean", "artifact SSIM mean"],
                            [[r["steps"], r["schedule"], " ".join(map(str, r["timesteps"])), r["fp32"]["psnr_db_mean"], r["fp32"]["ssim_mean"],
                              r["artifact"]["psnr_db_mean"], r["artifact"]["ssim_mean"]] for r in q["rows"]]))
    if passes:
        parts.append("<h2>Pass report</h2>")
        rows = []
        for p in passes.get("passes", []):
            delta = "; ".join(f"{comp}: " + ", ".join(f"{op} {n:+d}" for op, n in sorted(ops.items()))
                              for comp, ops in sorted((p.get("op_delta") or {}).items()) if ops)
            rows.append([p.get("pass"), p.get("changed"), p.get("seconds"), delta[:600] or "-"])
        parts.append(_table(["pass", "changed", "seconds", "ops added / removed"], rows))
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts), encoding="utf-8")
