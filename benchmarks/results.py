"""Results on disk: one JSON per machine and day, and the table in benchmarks/README.md.

`benchmarks/results/<machine>-<date>.json` holds every suite run that day on that machine. A
second run the same day merges into it: the suites it ran replace theirs (the replaced entries
are named on the console and kept under "superseded"), the others stay, so running suites one
at a time builds one file. Writes go to a temporary file first and are renamed into place.
The README table is regenerated, between its markers, from the newest results file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from wm_sim.errors import WmSimError

SCHEMA_VERSION = 1
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def results_path(results_dir: Path, machine: str, date: str) -> Path:
    return Path(results_dir) / f"{machine}-{date}.json"


def read_results(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WmSimError(
            f"{path} is not a readable results file ({exc}); move it away to start a new one"
        ) from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise WmSimError(
            f"{path} has results schema {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return data


def merge(existing: dict | None, new: dict) -> tuple[dict, list[str]]:
    """`new`'s suites over `existing`'s; returns the merged results and the suites it replaced."""
    if existing is None:
        return new, []
    replaced = sorted(set(existing["suites"]) & set(new["suites"]))
    superseded = existing.get("superseded", []) + [
        {"suite": name, **existing["suites"][name]} for name in replaced
    ]
    merged = {**existing, **{k: v for k, v in new.items() if k != "suites"}}
    merged["suites"] = {**existing["suites"], **new["suites"]}
    if superseded:
        merged["superseded"] = superseded
    return merged, replaced


def existing_results(path: Path) -> dict | None:
    """The results file at `path` as it is now, or None where there is none yet."""
    return read_results(path) if Path(path).exists() else None


def write_results(path: Path, results: dict, existing: dict | None) -> list[str]:
    """Write `results` merged over `existing` atomically; returns the suites that were replaced.

    `existing` is the file as the run found it at its start (existing_results; None where there
    was none), not as it is now: a run writes after every suite (a crash keeps what was
    measured), and merging over its own earlier writes would supersede its own suites.
    """
    path = Path(path)
    merged, replaced = merge(existing, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return replaced


def newest_results(results_dir: Path) -> Path | None:
    """The results file with the latest `updated` time (files of other formats are skipped)."""
    best, best_time = None, ""
    for path in Path(results_dir).glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("schema_version") == SCHEMA_VERSION:
            if data.get("updated", "") > best_time:
                best, best_time = path, data["updated"]
    return best


def table(results: dict, source: str) -> str:
    """The markdown table of a results file: each suite's headline figures and its targets."""
    m = results["machine"]
    lines = [
        f"`wm-sim bench` on {m['name']} ({m['cpu']}, {m['cores']} cores, {m['device']}"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, {m['torch_threads']} threads), {results['checkpoint']}, "
        f"accelerations: {results['acceleration']}; updated {results['updated']} ([{source}]({source})). "
        "Figures are medians over repeats, [min-max] beside them.",
        "",
        "| suite | measure | figure | target |",
        "|---|---|---|---|",
    ]
    for name, suite in results["suites"].items():
        for measure, figure in suite.get("table", []):
            lines.append(f"| {name} | {measure} | {figure} | |")
        for t in suite.get("targets", []):
            verdict = {True: "met", False: "missed", None: "not measured"}[t["held"]]
            value = "" if t["value"] is None else f"{t['value']:.4g}{t['unit']}"
            lines.append(
                f"| {name} | {t['measure']} | {value} | {t['op']} {t['bound']:g}{t['unit']}: **{verdict}** |"
            )
        if suite.get("bound"):
            lines.append(f"| {name} | bounded by | {suite['bound']} | |")
        plot = suite.get("figures", {}).get("plot")
        if plot:
            link = (Path(source).parent / plot).as_posix()
            lines.append(f"| {name} | plot over time | [{plot}]({link}) | |")
    return "\n".join(lines)


def update_readme(readme: Path, results_file: Path) -> None:
    """Replace the README's text between the markers with the table of `results_file`."""
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise WmSimError(f"{readme} lacks the markers {BEGIN} ... {END} that the results table goes between")
    source = os.path.relpath(results_file, readme.parent)
    body = table(read_results(results_file), source)
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = readme.with_name(f".{readme.name}.{os.getpid()}.partial")
    tmp.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    os.replace(tmp, readme)
