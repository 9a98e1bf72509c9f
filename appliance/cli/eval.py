"""`reckon eval`: evaluate a model configuration on a frozen eval set; list, show, compare."""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json, print_table, progress_bar

PART_TITLES = {"first_decision": "First decision (one generation per case)",
               "task": "Multi-step task (AgentLoop with the pack's tools)"}
SUMMARY_METRICS = ("tool_name_accuracy", "exact_call_accuracy", "argument_accuracy",
                   "refusal_accuracy", "task_success", "accuracy", "format_error_rate")


@click.group(name="eval")
def command():
    """Evaluate a model configuration on a frozen eval set and compare results."""


@command.command("run")
@click.option("--evalset", default=None,
              help="Frozen eval set name or digest, or a .jsonl file to freeze first "
                   "[default: the pack's held-out set].")
@click.option("--runtime", "runtime_spec", default="embedded", show_default=True,
              help="Runtime spec: embedded, llamacpp:PATH[+lora=GGUF], hf:embedded[+adapter=DIR], "
                   "ollama:MODEL[@URL], openai:MODEL@URL[#completions].")
@click.option("--pack", default=None,
              help="Pack name or folder [default: the pack the eval set was frozen from, else entitlements].")
@click.option("--prompt", type=click.Choice(["full", "compact"]), default="full", show_default=True,
              help="Which system prompt of the pack to send.")
@click.option("--tool-style", type=click.Choice(["full", "compact", "none"]), default="full",
              show_default=True, help="How tools are listed in the system turn.")
@click.option("--mode", type=click.Choice(["first", "task", "both"]), default="both", show_default=True,
              help="first: one generation per case; task: the multi-step loop; both.")
@click.option("--max-tokens", type=int, default=256, show_default=True,
              help="Max new tokens per generation.")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="Sampling temperature (0 is greedy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="Cases generated together in the first-decision part.")
@click.option("--max-steps", type=int, default=8, show_default=True,
              help="Max model steps per task in the multi-step part.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N cases.")
@click.option("--label", default=None, help="A name for the result [default: its id].")
@pass_app
def run_command(app, evalset, runtime_spec, pack, prompt, tool_style, mode, max_tokens,
                temperature, seed, batch_size, max_steps, limit, label):
    """Evaluate one model configuration and store the result."""
    from appliance import jobs
    from appliance.evaluation.runner import load_result

    params = dict(evalset=evalset, runtime_spec=runtime_spec, pack=pack, prompt=prompt,
                  tool_style=tool_style, mode=mode, batch_size=batch_size, limit=limit,
                  label=label, max_steps=max_steps,
                  sampling={"temperature": temperature, "seed": seed, "max_tokens": max_tokens})
    with progress_bar("eval", None, enabled=not app.json_output) as listener:
        job_id, outcome = jobs.run_inline(app.workspace, "eval", params, listener)
    result = load_result(app.workspace, outcome["eval_id"])
    if app.json_output:
        emit_json({"job_id": job_id, "eval_id": result["id"], "label": result["label"],
                   "summary": result["summary"], "model": result["model"],
                   "settings": result["settings"]})
        return
    click.echo(f"eval {result['id']} ({result['label']}): {len(result['cases'])} cases")
    _print_summary(result)


@command.command("list")
@pass_app
def list_command(app):
    """List stored eval results, newest first."""
    from appliance.evaluation.runner import list_results

    rows = list_results(app.workspace)
    if app.json_output:
        emit_json(rows)
        return
    if not rows:
        click.echo("No eval results; run one with `reckon eval run`.")
        return
    print_table(["id", "label", "model", "prompt", "tools", "cases", "tool name", "exact call",
                 "task success", "tokens/task", "created"], [
        [row["id"], row["label"], _model_name(row["identity"] or {}),
         (row["settings"] or {}).get("prompt"), (row["settings"] or {}).get("tool_style"),
         row["n_cases"], _value(row["summary"], "first_decision", "tool_name_accuracy"),
         _value(row["summary"], "first_decision", "exact_call_accuracy"),
         _value(row["summary"], "task", "task_success"), _tokens(row["summary"]),
         _time(row["created_at"])]
        for row in rows])


@command.command("show")
@click.argument("ref", metavar="ID")
@click.option("--cases", "show_cases", is_flag=True, help="Also list every failed case.")
@pass_app
def show_command(app, ref, show_cases):
    """Show one stored eval result (by id, id prefix, label or result file)."""
    from appliance.evaluation.runner import load_result

    result = load_result(app.workspace, ref)
    if app.json_output:
        emit_json(result if show_cases else {key: value for key, value in result.items()
                                             if key not in ("cases", "parts")})
        return
    out = console()
    out.print(f"Eval {result['id']} ({result['label']}), {_time(result['created_at'])}", markup=False)
    out.print(f"Eval set: {result['evalset']['digest']} ({result['evalset'].get('name')})", markup=False)
    out.print(f"Pack: {result['pack']['id']} {result['pack']['version']} {result['pack']['digest']}",
              markup=False)
    model = result["model"]
    out.print(f"Model: {model.get('kind')} {model.get('model')}  weights {model.get('weights_digest')}"
              f"  adapter {model.get('adapter_digest')}", markup=False)
    settings = result["settings"]
    out.print(f"Prompt: {settings.get('prompt')} ({settings.get('prompt_sha256')})  tools: "
              f"{settings.get('tool_style')}  renderer: {settings.get('renderer')}  sampling: "
              f"{settings.get('sampling')}", markup=False)
    _print_summary(result)
    if show_cases:
        for part, data in result["parts"].items():
            failed = [case for case in data["cases"] if not case["passed"]]
            print_table(["case", "category", "failure", "message"],
                        [[case["case_id"], case["category"], case["failure"], case["message"][:120]]
                         for case in failed], title=f"{PART_TITLES[part]}: failed cases")


@command.command("compare")
@click.argument("refs", nargs=-1, required=True, metavar="A B [C]")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a Markdown report to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report to this file.")
@click.option("--critical", default="tool_name_accuracy,exact_call_accuracy", show_default=True,
              help="Comma-separated metrics the cut-over gate checks (e.g. accuracy, "
                   "refusal_accuracy, rule:<id>, category:<name>).")
@click.option("--tolerance", type=float, default=2.0, show_default=True,
              help="How many percentage points a candidate may fall below the reference on a "
                   "critical metric.")
@click.option("--part", type=click.Choice(["all", "first_decision", "task"]), default="all",
              show_default=True, help="Which part of the results to compare.")
@pass_app
def compare_command(app, refs, as_json, markdown_path, html_path, critical, tolerance, part):
    """Compare results A (reference), B and C (candidates) on one frozen eval set."""
    from appliance.evaluation.compare import render_html, render_markdown, render_terminal
    from appliance.evaluation.runner import load_result

    if len(refs) not in (2, 3):
        raise click.UsageError(f"give two or three eval results (A B [C]), got {len(refs)}")
    results = [load_result(app.workspace, ref) for ref in refs]
    comparisons = compare_parts(results, part, [key.strip() for key in critical.split(",")
                                                if key.strip()], tolerance)
    passed = all(comparison["gate"]["candidates"] and
                 all(candidate["passed"] for candidate in comparison["gate"]["candidates"])
                 for comparison in comparisons.values())
    report = {"parts": comparisons, "gate_passed": passed}

    if markdown_path:
        text = "\n".join(f"<!-- {name} -->\n" + render_markdown(comparison).replace(
            "# Eval comparison", f"# Eval comparison: {PART_TITLES[name]}", 1)
            for name, comparison in comparisons.items())
        Path(markdown_path).write_text(text, encoding="utf-8")
    if html_path:
        Path(html_path).write_text(_combined_html(comparisons, render_html), encoding="utf-8")

    if as_json or app.json_output:
        emit_json(report)
        return
    out = console()
    for name, comparison in comparisons.items():
        out.rule(PART_TITLES[name])
        render_terminal(comparison, out)
    verdict = "PASSES" if passed else "FAILS"
    out.print(f"Overall cut-over gate over {', '.join(comparisons)}: {verdict}", markup=False)
    for path in (markdown_path, html_path):
        if path:
            out.print(f"Report written to {path}", markup=False)


def compare_parts(results: list[dict], part: str, critical: list[str], tolerance: float) -> dict:
    """Compare the results part by part; return {part: comparison}."""
    from appliance.errors import ReckonError
    from appliance.evaluation.compare import compare
    from appliance.evaluation.runner import common_parts, part_view

    names = common_parts(results) if part == "all" else [part]
    if not names:
        raise ReckonError("the results share no evaluated part (first_decision or task); "
                          "run them with the same --mode")
    return {name: compare(*[part_view(result, name) for result in results],
                          critical=critical, tolerance=tolerance)
            for name in names}


def _combined_html(comparisons: dict, render_html) -> str:
    """Join the per-part HTML pages into one page, each part under its own heading."""
    import html

    bodies = []
    for name, comparison in comparisons.items():
        page = render_html(comparison)
        body = page[page.index("<body>") + len("<body>"):page.rindex("</body>")]
        bodies.append(f"<section><h1>{html.escape(PART_TITLES[name])}</h1>{body}</section>")
    head = render_html(next(iter(comparisons.values())))
    return head[:head.index("<body>") + len("<body>")] + "\n".join(bodies) + "</body></html>\n"


# -- helpers -------------------------------------------------------------------------------


def _print_summary(result: dict) -> None:
    from appliance.evaluation.compare import format_metric

    for part, summary in result["summary"].items():
        rows = [[name, format_metric(summary["metrics"][name])] for name in SUMMARY_METRICS]
        tokens = summary["tokens"]
        mean = "-" if tokens["mean"] is None else f"{tokens['mean']:.1f}"
        rows.append(["tokens per task (mean)", f"{mean} (n={tokens['n']})"])
        seconds = (result.get("timing") or {}).get(part)
        if seconds:
            rows.append(["cases per minute", f"{summary['n_cases'] * 60 / seconds:.1f}"])
        print_table(["metric", "value [95% interval]"], rows, title=PART_TITLES[part])
        failures = [(name, count) for name, count in summary["failures"].items() if count]
        if failures:
            print_table(["failure", "cases"], failures, title="Failures")


def _value(summary: dict | None, part: str, metric: str) -> str:
    try:
        value = summary[part]["metrics"][metric]["value"]
    except (KeyError, TypeError):
        return "-"
    return "-" if value is None else f"{value * 100:.1f}%"


def _tokens(summary: dict | None) -> str:
    for part in ("task", "first_decision"):
        mean = ((summary or {}).get(part) or {}).get("tokens", {}).get("mean")
        if mean is not None:
            return f"{mean:.0f}"
    return "-"


def _model_name(identity: dict) -> str:
    name = f"{identity.get('kind', '?')}:{identity.get('model', '?')}"
    if identity.get("adapter"):
        name += f"+{Path(str(identity['adapter'])).name}"
    return name


def _time(value) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(value))
