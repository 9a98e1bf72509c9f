"""`reckon run`: run a tool pack against a teacher and record every trace."""

from __future__ import annotations

import click

from appliance.cli import pass_app
from appliance.cli.output import emit_json, print_table, progress_bar


@click.command("run")
@click.option("--pack", default="entitlements", show_default=True,
              help="Shipped pack name or path to a pack folder.")
@click.option("--teacher", default="embedded", show_default=True,
              help="Runtime spec: embedded, llamacpp:PATH, hf:PATH, ollama:MODEL[@URL], openai:MODEL@URL[#completions].")
@click.option("--tasks", "n_tasks", type=int, default=20, show_default=True, help="Number of tasks to draw.")
@click.option("--samples", type=int, default=1, show_default=True,
              help="Samples per task (K > 1 enables rejection sampling during curation).")
@click.option("--step-samples", type=int, default=1, show_default=True,
              help="Candidate actions drawn per step; the first that passes the step verifier is kept.")
@click.option("--guide", is_flag=True,
              help="Start each action with the tool the task expects next (for weak teachers); "
                   "the model writes arguments and answers, and the trace records it.")
@click.option("--hints", is_flag=True,
              help="Give the teacher the pack's hint for each expected call (STaR-style "
                   "rationalization, for weak teachers); recorded traces never contain it.")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Conversations in flight at once (server backends only).")
@click.option("--temperature", type=float, default=None,
              help="Sampling temperature [default: 0 for one sample, 0.8 for several].")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Max new tokens per step.")
@click.option("--max-steps", type=int, default=8, show_default=True, help="Max model steps per task.")
@click.option("--prompt", default="full", show_default=True,
              help="System prompt of the pack to use (full, compact, or another the pack names, "
                   "such as the entitlements pack's teacher prompt for --hints).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for task draws and sampling.")
@click.option("--task-source", default=None, help="Draw tasks from this task source of the pack only.")
@click.option("--resume", "resume_id", default=None, metavar="RUN_ID",
              help="Finish an interrupted run instead of starting a new one.")
@pass_app
def command(app, pack, teacher, n_tasks, samples, step_samples, guide, hints, concurrency, temperature, max_tokens, max_steps,
            prompt, seed, task_source, resume_id):
    """Run a tool pack's tasks against a teacher model and record every trace."""
    from appliance import jobs
    from appliance.harness import summarise_run

    workspace = app.workspace
    if resume_id:
        params = {"resume": resume_id, "teacher": teacher if teacher != "embedded" else None}
        total = None
    else:
        params = dict(pack=pack, teacher=teacher, tasks=n_tasks, samples=samples,
                      step_samples=step_samples, guide=guide, hints=hints,
                      concurrency=concurrency, temperature=temperature, max_tokens=max_tokens,
                      max_steps=max_steps, prompt=prompt, seed=seed, task_source=task_source)
        total = n_tasks * samples
    with progress_bar("traces", total, enabled=not app.json_output) as listener:
        job_id, result = jobs.run_inline(workspace, "harness.run", params, listener)
    summary = summarise_run(workspace.store(), result["run_id"])
    if app.json_output:
        emit_json({"job_id": job_id, **result, "summary": summary})
        return
    click.echo(f"run {result['run_id']}: {result['n_traces']} traces ({result['status']})")
    print_table(["outcome", "traces"], sorted(summary["outcomes"].items()), title="Outcomes")
    print_table(["rule", "passed", "failed", "n/a"],
                [(rule, c["passed"], c["failed"], c["n/a"]) for rule, c in sorted(summary["rules"].items())],
                title="Rule verdicts")
    click.echo(f"tokens per trace: {summary['tokens_per_trace']}")
