"""The results table: one row per method, seeds averaged, with AES and a paired bootstrap CI.

Inputs are results.json files, eval output dirs (holding results.json) or training run
dirs (holding .hydra/config.yaml and eval/results.json). Training runs whose configs
differ only in the seed (and bookkeeping keys, see replaygrpo.report.IGNORED) become one
row with mean ± sample std over seeds; any other input is its own row named by its dir.

Columns: accuracy (%) per benchmark; Avg, the unweighted mean over the five standard
benchmarks (over all columns when none of the five is present); mean response tokens
over the same benchmarks; AES against the baseline row in both conventions of
replaygrpo.report.aes, computed from seed-averaged accuracy and length; and the
difference in Avg against the reference row with a 95% paired bootstrap CI: per-problem
mean correctness (over samples and seeds) is paired across the two rows, problems are
resampled within each benchmark, and Avg is recomputed (percentile interval, seeded).

Rows are compared only under one eval protocol: samples per problem on each benchmark,
temperature, top_p, max_new_tokens, template, the benchmarks and their problem counts,
and the grader settings must agree across every input, or `make_table` refuses with one
line naming what differs (`allow_mixed=True` overrides, and the table then says so). The
shared protocol is stated above the table.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from replaygrpo.report import HYDRA_CONFIG, group_runs, load_run_config, mean_std
from replaygrpo.report.aes import AESError, aes_of_average, mean_aes

SCHEMA = "replaygrpo.results/1"
STANDARD = ("math500", "aime24", "amc23", "minerva_math", "olympiadbench")
DISPLAY = {"math500": "MATH500", "aime24": "AIME24", "amc23": "AMC23", "minerva_math": "Minerva",
           "olympiadbench": "OlympiadBench", "toy": "Toy"}
FORMATS = ("md", "csv", "latex")


class TableError(ValueError):
    """An input, baseline or reference is unusable; the message names it."""


class MixedSettingsError(TableError):
    """The inputs were evaluated under different eval settings; the message names them."""


PROTOCOL_KEYS = ("temperature", "top_p", "max_new_tokens", "template")
"""Eval config keys that must agree between compared rows (besides k, problems and grader)."""


@dataclass
class Run:
    """One results.json and where it came from."""

    source: str  # the input as given
    results_path: Path
    results: dict[str, Any]
    config: dict[str, Any] | None  # flattened Hydra config of a training run, else None
    keys: set[str] = field(default_factory=set)  # strings a baseline/reference may use for it


@dataclass
class Row:
    name: str
    runs: list[Run]
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs
def load_results(path: Path) -> dict[str, Any]:
    """A results.json, checked against the schema; errors name the file and what is missing."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TableError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(obj, dict):
        raise TableError(f"{path}: expected a JSON object with schema {SCHEMA!r}.")
    missing = [k for k in ("schema", "model", "k", "benchmarks", "average") if k not in obj]
    if missing:
        raise TableError(f"{path}: not a {SCHEMA} results file; missing key(s): {', '.join(missing)}.")
    if obj["schema"] != SCHEMA:
        raise TableError(f"{path}: schema is {obj['schema']!r}, expected {SCHEMA!r}.")
    for name, b in obj["benchmarks"].items():
        lacking = [k for k in ("n", "accuracy", "mean_tokens") if not isinstance(b, dict) or k not in b]
        if lacking:
            raise TableError(f"{path}: benchmarks.{name} lacks {', '.join(lacking)}.")
    return obj


def resolve_input(source: str | Path) -> Run:
    """Find the results.json (and the training run, if any) behind one input path."""
    p = Path(source)
    run_dir: Path | None = None
    if p.is_file():
        results = p
        if p.parent.name == "eval" and (p.parent.parent / HYDRA_CONFIG).is_file():
            run_dir = p.parent.parent
    elif p.is_dir():
        if (p / HYDRA_CONFIG).is_file() and (p / "eval" / "results.json").is_file():
            run_dir, results = p, p / "eval" / "results.json"
        elif (p / "results.json").is_file():
            results = p / "results.json"
            if p.name == "eval" and (p.parent / HYDRA_CONFIG).is_file():
                run_dir = p.parent
        else:
            raise TableError(f"{source}: no results.json (looked for {p / 'results.json'} and "
                             f"{p / 'eval' / 'results.json'}).")
    else:
        raise TableError(f"{source}: no such file or directory.")
    run = Run(str(source), results, load_results(results), load_run_config(run_dir) if run_dir else None)
    # A baseline/reference may name the input as given, or any path that leads to it.
    run.keys = {str(source), *(str(x.resolve()) for x in (p, results, results.parent, *([run_dir] if run_dir else [])))}
    return run


def _per_problem(run: Run, bench: str) -> dict[str, list[float]]:
    """problem id -> correctness of each sample, from the run's per-sample JSONL (read-only)."""
    path = run.results_path.parent / f"{bench}.jsonl"
    if not path.is_file():
        raise TableError(f"{path} is missing: the reference CI needs the per-sample files next to results.json.")
    out: dict[str, dict[int, float]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # cut off by a kill; the next eval run repairs it
            raise TableError(f"{path}:{i + 1}: malformed JSON line.") from None
        out.setdefault(str(r["problem_id"]), {})[int(r["sample"])] = float(bool(r["correct"]))
    return {pid: list(s.values()) for pid, s in out.items()}


# ---------------------------------------------------------------- comparability
def protocol(run: Run) -> dict[str, Any]:
    """The eval settings that make numbers comparable, as `setting name -> value`."""
    res, cfg = run.results, run.results.get("config") or {}
    out: dict[str, Any] = {"benchmarks": ", ".join(sorted(res["benchmarks"]))}
    for name, b in res["benchmarks"].items():
        out[f"samples per problem on {name}"] = b.get("k", res["k"])
        out[f"problems in {name}"] = b["n"]
    out.update({key: cfg.get(key) for key in PROTOCOL_KEYS})
    grader = res.get("grader")
    out["grader"] = json.dumps(grader, sort_keys=True) if grader else None  # None: made before it was recorded
    return out


def check_comparable(rows: list[Row], allow_mixed: bool) -> tuple[dict[str, Any], list[str]]:
    """The settings all inputs share, and one line per differing setting (an error unless allow_mixed)."""
    seen: dict[str, dict[str, list[str]]] = {}  # setting -> shown value -> rows with it
    for row in rows:
        for run in row.runs:
            for key, value in protocol(run).items():
                shown = _show(value)
                names = seen.setdefault(key, {}).setdefault(shown, [])
                if row.name not in names:
                    names.append(row.name)
    shared = {k: next(iter(v)) for k, v in seen.items() if len(v) == 1}
    diffs = [f"{k} (" + ", ".join(f"{val} in {', '.join(repr(n) for n in names)}" for val, names in v.items()) + ")"
             for k, v in seen.items() if len(v) > 1]
    if diffs and not allow_mixed:
        raise MixedSettingsError("refusing to compare runs evaluated differently: " + "; ".join(diffs)
                                 + ". Re-evaluate under one protocol, or pass --allow-mixed (allow_mixed=True).")
    return shared, diffs


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith("{"):
        grader = json.loads(value)  # the profile name, and every setting after it
        return grader.pop("profile", "?") + " (" + ", ".join(f"{k}={v}" for k, v in grader.items()) + ")"
    return "not recorded" if value is None else str(value)


def protocol_line(shared: dict[str, Any], columns: list[str]) -> str:
    """`Eval protocol: ...`, the settings every row shares, compactly."""
    parts = []
    for label, prefix in (("samples per problem", "samples per problem on"), ("problems", "problems in")):
        vals = [shared.get(f"{prefix} {b}") for b in columns]
        if None in vals:
            continue
        parts.append(f"{label} {vals[0]} on each benchmark" if len(set(vals)) == 1 else
                     f"{label} " + ", ".join(f"{DISPLAY.get(b, b)} {v}" for b, v in zip(columns, vals)))
    parts += [f"{k} {shared[k]}" for k in (*PROTOCOL_KEYS, "grader") if shared.get(k, "not recorded") != "not recorded"]
    return "Eval protocol (shared by every row): " + "; ".join(parts) + "."


# ---------------------------------------------------------------- statistics
def row_stats(row: Row, columns: list[str], avg_over: list[str]) -> dict[str, Any]:
    """Seed mean and std of accuracy (%) per column, of Avg and of mean tokens."""
    def get(run: Run, b: str, key: str) -> float:
        entry = run.results["benchmarks"].get(b)
        return float(entry[key]) if entry else math.nan

    def over_seeds(values: list[float]) -> tuple[float, float]:
        # A seed without this benchmark makes the cell n/a rather than a mean over fewer seeds.
        return mean_std(values, nan="propagate")

    stats: dict[str, Any] = {b: over_seeds([100 * get(r, b, "accuracy") for r in row.runs]) for b in columns}
    stats["avg"] = over_seeds([sum(100 * get(r, b, "accuracy") for b in avg_over) / len(avg_over) for r in row.runs])
    stats["tokens"] = over_seeds([sum(get(r, b, "mean_tokens") for b in avg_over) / len(avg_over) for r in row.runs])
    stats["acc_by_bench"] = {b: stats[b][0] for b in avg_over}
    stats["len_by_bench"] = {b: over_seeds([get(r, b, "mean_tokens") for r in row.runs])[0] for b in avg_over}
    return stats


def paired_bootstrap(row: Row, ref: Row, benches: list[str], n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Avg(row) - Avg(ref) in points with a 95% percentile CI, resampling paired problems per benchmark."""
    rng = np.random.default_rng(seed)
    point, boots = 0.0, np.zeros(n_boot)
    for b in benches:
        a = _merge([_per_problem(r, b) for r in row.runs])
        c = _merge([_per_problem(r, b) for r in ref.runs])
        shared = sorted(set(a) & set(c))
        if not shared:
            raise TableError(f"rows {row.name!r} and {ref.name!r} share no {b} problems to pair.")
        diff = np.array([a[p] - c[p] for p in shared])
        point += diff.mean()
        boots += diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    scale = 100 / len(benches)
    lo, hi = np.percentile(boots * scale, [2.5, 97.5])
    return point * scale, float(lo), float(hi)


def _merge(per_run: list[dict[str, list[float]]]) -> dict[str, float]:
    """Mean correctness per problem over every sample of every seed."""
    pooled: dict[str, list[float]] = {}
    for d in per_run:
        for pid, values in d.items():
            pooled.setdefault(pid, []).extend(values)
    return {pid: sum(v) / len(v) for pid, v in pooled.items()}


def _find(rows: list[Row], key: str | Path, role: str) -> Row:
    key_s = str(key)
    resolved = str(Path(key).resolve()) if Path(key).exists() else None
    for row in rows:
        if row.name == key_s or any(key_s in r.keys or resolved in r.keys for r in row.runs):
            return row
    raise TableError(f"{role} {key_s!r} is not among the inputs; rows: {', '.join(repr(r.name) for r in rows)}.")


# ---------------------------------------------------------------- the table
def make_table(inputs: list[str | Path], baseline: str, reference: str | None = None, fmt: str = "md",
               alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0,
               n_boot: int = 2000, seed: int = 0, allow_mixed: bool = False) -> str:
    """The comparison table as Markdown, CSV or LaTeX (booktabs).

    `baseline` and `reference` are row names or input paths. AES is against `baseline`
    (alpha, beta, gamma as in replaygrpo.report.aes); the Δ column is against `reference`
    (omitted when None), with a paired bootstrap CI of `n_boot` resamples seeded by `seed`.
    Inputs evaluated under different settings raise MixedSettingsError unless `allow_mixed`.
    """
    if n_boot < 1:
        raise TableError(f"bootstrap size must be >= 1, got {n_boot}.")
    if fmt not in FORMATS:
        raise TableError(f"unknown table format {fmt!r}; known: {', '.join(FORMATS)}.")
    if not inputs:
        raise TableError("no inputs: pass results.json files, eval output dirs or training run dirs.")
    runs = [resolve_input(i) for i in inputs]
    rows = [Row(name, members) for name, members in
            group_runs([(r, r.config, r.results_path.parent.name) for r in runs])]
    found = {b for r in runs for b in r.results["benchmarks"]}
    columns = [b for b in STANDARD if b in found] + sorted(found - set(STANDARD))
    avg_over = [b for b in STANDARD if b in found] or columns
    shared, mixed = check_comparable(rows, allow_mixed)
    for row in rows:
        row.stats = row_stats(row, columns, avg_over)
    base = _find(rows, baseline, "baseline")
    ref = _find(rows, reference, "reference") if reference is not None else None
    notes: list[str] = []
    for row in rows:
        s, b = row.stats, base.stats
        for label, fn in (("aes_avg", aes_of_average), ("aes_mean", mean_aes)):
            try:
                s[label] = fn(s["acc_by_bench"], s["len_by_bench"], b["acc_by_bench"], b["len_by_bench"],
                              alpha, beta, gamma)
            except AESError as err:  # e.g. a baseline at 0% on AIME: show n/a, say why below
                s[label] = math.nan
                if f"AES n/a: {err}" not in notes:
                    notes.append(f"AES n/a: {err}")
        s["is_ref"] = row is ref
        if ref is not None:
            s["delta"] = (0.0, 0.0, 0.0) if row is ref else paired_bootstrap(row, ref, avg_over, n_boot, seed)
    caption = (f"Accuracy in % (avg@n, n samples per problem as stated above), mean ± std over seeds; "
               f"Avg over {', '.join(DISPLAY.get(b, b) for b in avg_over)}; "
               f"tokens = mean response length; AES vs {base.name!r} (alpha={alpha}, beta={beta}, gamma={gamma}): "
               "of the averaged accuracy/length, and the mean of per-benchmark AES")
    if ref is not None:
        caption += f"; Δ Avg vs {ref.name!r} in points with a 95% paired bootstrap CI over problems ({n_boot} resamples)"
    caption += "."
    head = [protocol_line(shared, columns)]
    if mixed:
        head.append("MIXED eval settings, compared anyway (--allow-mixed): " + "; ".join(mixed) + ".")
    render = {"md": _markdown, "csv": _csv, "latex": _latex}[fmt]
    return render(rows, columns, ref is not None, [caption, *notes], head)


def _num(x: float, digits: int = 1, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _cells(row: Row, columns: list[str], has_ref: bool, pm: str) -> list[str]:
    s = row.stats

    def ms(pair: tuple[float, float], digits: int = 1) -> str:
        mean, std = pair
        return _num(mean, digits) + ("" if math.isnan(std) else f"{pm}{_num(std, digits)}")

    cells = [row.name, str(len(row.runs)), *(ms(s[b]) for b in columns), ms(s["avg"]), ms(s["tokens"], 0),
             _num(s["aes_avg"], 3), _num(s["aes_mean"], 3)]
    if has_ref:
        d, lo, hi = s["delta"]
        cells.append("ref" if s["is_ref"] else f"{_num(d, 1, True)} [{_num(lo, 1, True)}, {_num(hi, 1, True)}]")
    return cells


def _header(columns: list[str], has_ref: bool, delta: str = "Δ Avg vs ref [95% CI]") -> list[str]:
    return ["Method", "Seeds", *(DISPLAY.get(b, b) for b in columns), "Avg", "Tokens", "AES (of avg)",
            "AES (mean)", *([delta] if has_ref else [])]


def _markdown(rows: list[Row], columns: list[str], has_ref: bool, notes: list[str], above: list[str]) -> str:
    head = _header(columns, has_ref)
    lines = [*above, "", "| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, columns, has_ref, " ± ")) + " |" for r in rows]
    return "\n".join(lines + [""] + [f"{n}" for n in notes]) + "\n"


def _csv(rows: list[Row], columns: list[str], has_ref: bool, notes: list[str], above: list[str]) -> str:
    # Plain CSV (no comment lines, which CSV readers reject); the settings are checked all the same.
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    stat_cols = [*columns, "avg", "tokens"]
    w.writerow(["method", "seeds", *(f"{c}{suffix}" for c in stat_cols for suffix in ("", "_std")),
                "aes_of_avg", "aes_mean", *(["delta_vs_ref", "ci_low", "ci_high"] if has_ref else [])])

    def val(x: float | None) -> str:
        return "" if x is None or math.isnan(x) else f"{x:.6g}"

    for r in rows:
        s = r.stats
        w.writerow([r.name, len(r.runs), *(val(s[c][i]) for c in stat_cols for i in (0, 1)), val(s["aes_avg"]),
                    val(s["aes_mean"]), *([val(x) for x in s["delta"]] if has_ref else [])])
    return buf.getvalue()


def latex_escape(text: str) -> str:
    """Escape the characters that break LaTeX in names: _ % & # (and a lone $)."""
    for ch in ("&", "%", "_", "#", "$"):
        text = text.replace(ch, "\\" + ch)
    return text.replace("Δ", "$\\Delta$")


def _latex(rows: list[Row], columns: list[str], has_ref: bool, notes: list[str], above: list[str]) -> str:
    head = _header(columns, has_ref, "Δ Avg vs ref")
    lines = [*(f"% {latex_escape(n)}" for n in [*above, *notes]),
             "\\begin{tabular}{l" + "r" * (len(head) - 1) + "}", "\\toprule",
             " & ".join(latex_escape(h) for h in head) + " \\\\", "\\midrule"]
    for r in rows:
        cells = [latex_escape(c) for c in _cells(r, columns, has_ref, " PLUSMINUS ")]
        lines.append(" & ".join(c.replace(" PLUSMINUS ", " $\\pm$ ") for c in cells) + " \\\\")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"
