"""Evaluation: eval sets, the BFCL-compatible checker, metrics and comparisons.

Typical use by a runner:

    evalset = freeze_evalset(path, workspace)            # or load_frozen(workspace, name)
    results = [check_case(case, output, functions=pack.tools, rule_verdicts=...,
                          prompt_tokens=..., completion_tokens=...)
               for case, output in ...]
    result = EvalResult(evalset.digest, model={...}, settings={...}, cases=results)
    summary = summarize(result.cases)
    comparison = compare(reference_result, candidate_result, critical=["accuracy"])
"""

from appliance.evaluation.checker import (FAILURE_CATEGORIES, CallCheck, CaseResult, CheckOptions,
                                          CheckerError, ModelOutput, check_call, check_case)
from appliance.evaluation.compare import (ComparisonError, compare, render, render_html,
                                          render_json, render_markdown, render_terminal)
from appliance.evaluation.evalset import (EvalCase, EvalSet, EvalSetError, EvalSetTamperedError,
                                          freeze, freeze_evalset, list_frozen, load_evalset,
                                          load_frozen)
from appliance.evaluation.metrics import EvalResult, Metric, summarize, wilson_interval

__all__ = [
    "FAILURE_CATEGORIES", "CallCheck", "CaseResult", "CheckOptions", "CheckerError",
    "ModelOutput", "check_call", "check_case", "ComparisonError", "compare", "render", "render_html",
    "render_json", "render_markdown", "render_terminal", "EvalCase", "EvalSet",
    "EvalSetError", "EvalSetTamperedError", "freeze", "freeze_evalset", "list_frozen",
    "load_evalset", "load_frozen", "EvalResult", "Metric", "summarize", "wilson_interval",
]
