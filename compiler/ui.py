"""Progress and summaries on the terminal (rich), quiet in ``--quiet`` mode."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table


class UI:
    def __init__(self, quiet: bool = False):
        import sys

        # Piped output (CI logs) gets room for whole cells instead of "text_enc…".
        self.console = Console(stderr=True, quiet=quiet, width=None if sys.stderr.isatty() else 140)
        self.t0 = time.perf_counter()
        self._bar = None

    def step(self, msg: str) -> None:
        self.console.print(f"[dim]{time.perf_counter() - self.t0:7.1f}s[/dim] {msg}", highlight=False)

    def counter(self, label: str):
        """A callback ``(done, total, what)`` that draws a progress bar for ``label``."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        state = {}

        def update(done: int, total: int, what: str = "") -> None:
            if "bar" not in state:
                state["bar"] = Progress(TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                        TextColumn("{task.description}"), console=self.console, transient=True)
                state["bar"].start()
                state["task"] = state["bar"].add_task(what, total=total)
            state["bar"].update(state["task"], completed=done, description=what[:40])
            if done >= total:
                state["bar"].stop()
                self.step(f"{label}: {total} done")

        return update

    def summary(self, report: dict) -> None:
        t = Table(title=f"lgc build {report['target']} — {report['model']}", title_justify="left")
        for col in ("component", "file", "KiB", "latency ms", "PSNR dB (min)", "delegates", "ops outside"):
            t.add_column(col, justify="right" if col not in ("component", "file") else "left")
        for name, c in report["components"].items():
            t.add_row(name, c["file"], f"{c['bytes'] / 1024:.0f}", f"{c['latency_ms_median']:.2f}", f"{c['psnr_db_min']:.1f}",
                      str(c.get("delegate_subgraphs", "")), str(c.get("nondelegated_compute_ops", "")))
        e = report["end_to_end"]
        t.add_row("end to end", f"{e['cases']} cases", f"{report['bundle_bytes'] / 1024:.0f}", f"{e['latency_ms_median']:.1f}",
                  f"{e['psnr_db_min']:.1f}", "", "", style="bold")
        self.console.print(t)
        self.console.print(f"end-to-end SSIM min {e['ssim_min']:.4f}, PSNR mean {e['psnr_db_mean']:.2f} dB against {report['reference']}")
        if report.get("quality_vs_steps"):
            self.steps_table(report["quality_vs_steps"])
        for comp, rows in (report.get("sensitivity") or {}).items():
            self.sensitivity_table(comp, rows)
        if report.get("mixed_precision"):
            self.mixed_precision(report["mixed_precision"], e)

    def mixed_precision(self, m: dict, e: dict) -> None:
        verdict = "[green]met[/green]" if m["met"] else "[bold red]not met[/bold red]"
        self.console.print(f"--min-psnr {m['budget_db']:g}: {verdict} (end-to-end PSNR min {e['psnr_db_min']:.2f} dB); "
                           f"{len(m['fallback'])} {m['component']} layer(s) kept in fp32, "
                           f"{100 * m['int8_mac_fraction']:.1f}% of its MACs in int8, {m.get('activations', 'dynamic')} activations")
        for layer in m["fallback"]:
            self.console.print(f"  fp32: {layer}")
        strategies = m.get("strategies") or {}
        if len(strategies) > 1:  # --set search_mixed_precision.strategy=inc: INC's choice beside lgc's own
            for name, c in strategies.items():
                chosen = "nothing met the budget" if c["psnr_db_min"] is None else \
                    f"{c['float_layers']} fp32 layer(s), {c['activations']} activations, {c['psnr_db_min']:.2f} dB on the search cases"
                self.console.print(f"  strategy {name}{' (used)' if name == m.get('strategy') else ''}: {chosen}, {c['trials']} trial(s)")

    def sensitivity_table(self, comp: str, rows: list[dict], top: int = 15) -> None:
        t = Table(title=f"{comp}: layers most sensitive to int8, alone (output PSNR; all {len(rows)} in report.json)",
                  title_justify="left")
        for col in ("layer", "op", "PSNR dB", "MAC share"):
            t.add_column(col, justify="left" if col in ("layer", "op") else "right")
        for r in rows[:top]:
            t.add_row(r["layer"], r["op"], f"{r['psnr_db']:.1f}", f"{100 * r['mac_share']:.1f}%")
        self.console.print(t)

    def steps_table(self, q: dict) -> None:
        t = Table(title=f"quality vs steps ({q['solver']}) against {q['reference']} ({q['reference_steps']} steps, {q['cases']} cases)",
                  title_justify="left")
        for col in ("steps", "timesteps", "fp32 PSNR mean/min", "fp32 SSIM mean", "artifact PSNR mean/min", "artifact SSIM mean"):
            t.add_column(col, justify="left" if col == "timesteps" else "right")
        for r in q["rows"]:
            f, a = r["fp32"], r["artifact"]
            t.add_row(f"{r['steps']} {r['schedule']}", " ".join(map(str, r["timesteps"]))[:48],
                      f"{f['psnr_db_mean']:.2f} / {f['psnr_db_min']:.2f}", f"{f['ssim_mean']:.4f}",
                      f"{a['psnr_db_mean']:.2f} / {a['psnr_db_min']:.2f}", f"{a['ssim_mean']:.4f}")
        self.console.print(t)

    def checks(self, checks) -> None:
        t = Table(title="lgc check", title_justify="left")
        for col in ("check", "value", "limit", "result"):
            t.add_column(col, justify="left" if col in ("check", "result") else "right")
        for c in checks:
            t.add_row(c.name, f"{c.value:.4g}" if abs(c.value) < 1e4 else f"{c.value:,.0f}",
                      ("≥ " if c.kind == "min" else "≤ ") + (f"{c.limit:.4g}" if abs(c.limit) < 1e4 else f"{c.limit:,.0f}"),
                      "[green]ok[/green]" if c.passed else "[bold red]FAILED[/bold red]")
        self.console.print(t)
        failed = sum(not c.passed for c in checks)
        self.console.print(f"{len(checks) - failed}/{len(checks)} checks hold" + (f", [bold red]{failed} failed[/bold red]" if failed else ""))
