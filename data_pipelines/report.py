"""The end-of-run summary of ``geogen-prepare``, as a rich table for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from geogen.io.store import sampling_warnings


def render_summary(summary: dict[str, Any], path: str, console: Console | None = None) -> None:
    """Print what a prepare run saw, rejected (and why) and wrote."""
    console = console or Console()
    table = Table(title=f"geogen-prepare: {summary.get('source')} -> {path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("count", justify="right")
    rows = [
        ("task", summary.get("task")),
        ("frames read", summary.get("frames")),
        ("time span", f"{summary.get('first_time')} .. {summary.get('last_time')}"),
        (
            "missing time steps (gaps)",
            f"{summary.get('missing_time_steps')} ({summary.get('gaps')})",
        ),
        ("unreadable files skipped", summary.get("bad_files")),
        ("tiles per frame", summary.get("tiles_per_frame")),
        ("sequences seen", summary.get("sequences_seen")),
        ("  rejected: gap", summary.get("rejected_gap")),
        ("  rejected: unreadable file", summary.get("rejected_bad_file")),
        ("  rejected: split guard", summary.get("rejected_split_guard")),
        ("  complete", summary.get("sequences_complete")),
        ("crops considered", summary.get("crops_candidate")),
        ("  rejected: too much missing data", summary.get("rejected_nan")),
        (
            f"  not drawn ({summary.get('sampling_method')} sampling)",
            summary.get("rejected_sampling"),
        ),
        ("crops written", summary.get("crops_written")),
    ]
    for split, n in (summary.get("split_counts") or {}).items():
        rows.append((f"  {split}", n))
    for what, count in rows:
        table.add_row(what, str(count))
    console.print(table)
    hist = summary.get("rain_fraction_histogram") or {}
    counts, bins = hist.get("counts") or [], hist.get("bins") or []
    if counts and sum(counts):
        console.print("rain fraction of the crops written:")
        peak = max(counts)
        for lo, hi, n in zip(bins[:-1], bins[1:], counts, strict=True):
            bar = "#" * round(40 * n / peak) if peak else ""
            console.print(f"  {lo:4.2f}-{hi:4.2f} {n:7d} {bar}")
    for err in summary.get("bad_file_errors") or []:
        console.print(f"[yellow]skipped:[/yellow] {err}")
    timings = summary.get("timings_s")
    if timings:
        console.print("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    for warning in sampling_warnings(summary):  # last, where a new user looks
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}")
