"""`reckon curate`: turn recorded traces into a versioned training set."""

from __future__ import annotations

import click

from appliance.cli import pass_app
from appliance.cli.output import console, emit_json, print_table, progress_bar
from appliance.errors import ReckonError

FUNNEL_STEPS = ("traces_in", "verified", "verified_prefixes", "selected", "split", "deduplicated",
                "leakage_dropped", "balanced", "rendered")


@click.command("curate")
@click.option("--runs", default=None, metavar="R1,R2", help="Comma-separated run ids to curate.")
@click.option("--all", "all_runs", is_flag=True, help="Curate every run in the workspace.")
@click.option("--pack", default=None,
              help="Pack name or folder [default: the pack the runs recorded].")
@click.option("--base", default="embedded", show_default=True,
              help="Base model whose tokenizer and format render the examples: embedded, a .gguf "
                   "file or a Hugging Face folder.")
@click.option("--max-length", type=int, default=1024, show_default=True,
              help="Maximum tokens per example; longer ones lose early history turns.")
@click.option("--per-task", type=int, default=2, show_default=True,
              help="Verified samples kept per task (shortest first, then the most different).")
@click.option("--validation", "validation_fraction", type=float, default=0.1, show_default=True,
              help="Fraction of tasks held out for validation.")
@click.option("--floor", "floors", multiple=True, metavar="DIM=VALUE:N",
              help="Oversample a category to at least N training examples, e.g. "
                   "outcome=escalate:50. DIM is tool, rule or outcome. Repeatable.")
@click.option("--cap", "caps", multiple=True, metavar="DIM=VALUE:N",
              help="Keep at most N training examples of a category, e.g. tool=lookup_rate:400. "
                   "Repeatable.")
@click.option("--max-repeat", type=int, default=10, show_default=True,
              help="Maximum repeat count a floor may give one example.")
@click.option("--prompt-kind", type=click.Choice(["compact", "full", "trace"]), default="compact",
              show_default=True, help="System prompt written into the examples: the pack's "
                                      "compact or full prompt, or the trace's own.")
@click.option("--tool-style", type=click.Choice(["compact", "full", "none"]), default="compact",
              show_default=True, help="Tool listing style of the specialist format.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes that verify traces in parallel.")
@click.option("--verified-prefixes", is_flag=True,
              help="Also keep the step-verified decisions of traces that step-level rejection "
                   "sampling stopped, for tasks without a verified whole trace.")
@pass_app
def command(app, runs, all_runs, pack, base, max_length, per_task, validation_fraction, floors,
            caps, max_repeat, prompt_kind, tool_style, workers, verified_prefixes):
    """Verify, select, split, deduplicate, balance and render traces into a dataset."""
    from appliance import jobs
    from appliance.curation.balance import parse_limit

    if bool(runs) == bool(all_runs):
        raise ReckonError("give either --runs R1,R2 or --all")
    # Parse the limits here so that a typo fails before any work starts.
    for spec in floors:
        parse_limit(spec, "--floor")
    for spec in caps:
        parse_limit(spec, "--cap")
    params = {"runs": None if all_runs else [run.strip() for run in runs.split(",") if run.strip()],
              "pack": pack, "base": base, "max_length": max_length, "per_task": per_task,
              "validation_fraction": validation_fraction, "floors": list(floors),
              "caps": list(caps), "max_repeat": max_repeat, "prompt_kind": prompt_kind,
              "tool_style": tool_style, "workers": workers,
              "verified_prefixes": verified_prefixes}
    with progress_bar("curate", None, enabled=not app.json_output) as listener:
        job_id, result = jobs.run_inline(app.workspace, "curate", params, listener)
    result = dict(result, job_id=job_id)
    if app.json_output:
        emit_json(result)
        return
    print_funnel(result)


def print_funnel(result: dict) -> None:
    funnel = result["funnel"]
    print_table(["stage", "count"], [(step.replace("_", " "), funnel.get(step, 0))
                                     for step in FUNNEL_STEPS
                                     if step in funnel or step != "verified_prefixes"],
                title="Curation funnel")
    print_table(["filter", "in", "out"], [(entry["filter"], entry["in"], entry["out"])
                                          for entry in result["filters"]], title="Filters")
    reasons = {key: value for key, value in result["verification"].items()
               if key.startswith("reason.")}
    if reasons:
        print_table(["rejection reason", "traces"],
                    [(key.removeprefix("reason."), value)
                     for key, value in sorted(reasons.items(), key=lambda item: -item[1])],
                    title="Verification")
    for entry in result["balance"].get("floors", []):
        if not entry["met"]:
            console().print(f"floor {entry['category']}:{entry['floor']} not met "
                            f"({entry['after']}): {entry.get('why')}")
    tokenization = result["tokenization"]
    if tokenization["could_not_fit"]:
        console().print(f"{tokenization['could_not_fit']} example(s) did not fit max length "
                        "even without early history and were left out")
    console().print(f"dataset {result['dataset_id']} ({result['split_sizes']['train']} train, "
                    f"{result['split_sizes']['validation']} validation) at {result['path']}")
