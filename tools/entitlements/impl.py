"""Workplace-entitlements enquiry desk: tools, policy rule checkers and the task generator.

All awards, rates and guidance are fictional. Facts live in the data files, never in the
prompts: `data/rates.csv` (one row per award, classification, rate type and effective date)
is loaded into SQLite, and `data/guidance.jsonl` (documents split into passages) into an
SQLite FTS5 index ranked by bm25. `open_context` builds both in memory, one connection per
context, and switches the connection to read-only.

Rule checkers receive a `TraceView` and return `RuleVerdict(None)` when a rule does not
apply. They read the task's `expected` block when the task has one, and otherwise fall back
to what they can detect in the request (identifiers, amounts owed, out-of-scope topics).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import json
import logging
import random
import re
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import PackError
from appliance.packs import RuleVerdict, ToolError, TraceView

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parent
RATES_FILE = "data/rates.csv"
GUIDANCE_FILE = "data/guidance.jsonl"
TEMPLATES_FILE = "tasks/templates.yaml"

AWARDS = [
    "Coastal Hospitality Award",
    "Regional Retail Award",
    "Harbourside Cleaning Services Award",
    "Inland Warehousing Award",
]
ALL_AWARDS = "All awards"
CLASSIFICATIONS = [f"Level {number}" for number in range(1, 7)]
RATE_TYPES = [
    "base_hourly", "casual_loading", "saturday_penalty", "sunday_penalty",
    "public_holiday", "overtime_first_2h", "night_shift_allowance", "meal_allowance",
]
REFUSAL_CATEGORIES = ["tax", "migration", "legal_representation", "medical", "other"]
TERMINAL_TOOLS = ("final_answer", "refuse", "escalate_to_officer")
OUTCOME_TOOLS = {"answer": "final_answer", "silent": "final_answer",
                 "refuse": "refuse", "escalate": "escalate_to_officer"}
CATEGORIES = ["rate_lookup", "guidance", "rate_and_guidance", "refusal",
              "escalation", "silent", "identifier"]

# An enquirer reporting more than this many dollars owed is referred to an officer.
UNDERPAYMENT_THRESHOLD = 500.0
SEARCH_LIMIT = 3
PASSAGE_ID = re.compile(r"\bG-\d{3}-p\d+\b")


# -- context -------------------------------------------------------------------------------


@dataclass
class DeskContext:
    """The per-worker resources: one SQLite connection holding rates and guidance."""

    connection: sqlite3.Connection
    pack_dir: Path


def open_context(pack_dir: Path) -> DeskContext:
    """Load the rates table and the guidance index into a fresh in-memory SQLite database."""
    pack_dir = Path(pack_dir)

    # A harness may run a tool call on a timeout thread, so check_same_thread is off.
    # Each worker still gets its own context and so its own connection.
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.row_factory = sqlite3.Row
    _load_rates(connection, pack_dir / RATES_FILE)
    _load_guidance(connection, pack_dir / GUIDANCE_FILE)

    connection.execute("PRAGMA query_only = ON")
    counts = connection.execute("SELECT (SELECT COUNT(*) FROM rates), (SELECT COUNT(*) FROM passages)").fetchone()
    log.debug("entitlements context opened from %s: %d rates, %d passages", pack_dir, counts[0], counts[1])
    return DeskContext(connection=connection, pack_dir=pack_dir)


def _load_rates(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute(
        "CREATE TABLE rates (award TEXT, classification TEXT, rate_type TEXT,"
        " effective_date TEXT, value REAL, unit TEXT,"
        " PRIMARY KEY (award, classification, rate_type, effective_date))")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        expected_columns = ["award", "classification", "rate_type", "effective_date", "value", "unit"]
        if reader.fieldnames != expected_columns:
            raise PackError(path, "line 1", f"columns must be {', '.join(expected_columns)}")
        for line, row in enumerate(reader, start=2):
            connection.execute("INSERT INTO rates VALUES (?, ?, ?, ?, ?, ?)",
                               _validated_rate_row(path, line, row))


def _validated_rate_row(path: Path, line: int, row: dict) -> tuple:
    where = f"line {line}"
    if row["award"] not in AWARDS:
        raise PackError(path, f"{where}: award", f"unknown award {row['award']!r}; use one of: {', '.join(AWARDS)}")
    if row["classification"] not in CLASSIFICATIONS:
        raise PackError(path, f"{where}: classification",
                        f"unknown classification {row['classification']!r}; use Level 1 to Level 6")
    if row["rate_type"] not in RATE_TYPES:
        raise PackError(path, f"{where}: rate_type",
                        f"unknown rate type {row['rate_type']!r}; use one of: {', '.join(RATE_TYPES)}")
    try:
        dt.date.fromisoformat(row["effective_date"])
    except (TypeError, ValueError):
        raise PackError(path, f"{where}: effective_date",
                        f"{row['effective_date']!r} is not a YYYY-MM-DD date") from None
    try:
        value = float(row["value"])
    except (TypeError, ValueError):
        raise PackError(path, f"{where}: value", f"{row['value']!r} is not a number") from None
    return (row["award"], row["classification"], row["rate_type"],
            row["effective_date"], value, row["unit"])


def _load_guidance(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute(
        "CREATE VIRTUAL TABLE passages USING fts5("
        "passage_id UNINDEXED, award UNINDEXED, title, text, tokenize = 'porter unicode61')")
    seen: set[str] = set()
    for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as error:
            raise PackError(path, f"line {line}", f"invalid JSON: {error.msg}") from None
        for key in ("id", "award", "title", "passages"):
            if key not in document:
                raise PackError(path, f"line {line}: {key}", "missing")
        if not re.fullmatch(r"G-\d{3}", document["id"]) or document["id"] in seen:
            raise PackError(path, f"line {line}: id",
                            f"{document['id']!r} is not a new document id of the form G-001")
        seen.add(document["id"])
        if document["award"] not in AWARDS and document["award"] != ALL_AWARDS:
            raise PackError(path, f"line {line}: award", f"unknown award {document['award']!r};"
                            f" use {ALL_AWARDS!r} or one of: {', '.join(AWARDS)}")
        for number, text in enumerate(document["passages"], start=1):
            connection.execute("INSERT INTO passages VALUES (?, ?, ?, ?)",
                               (f"{document['id']}-p{number}", document["award"],
                                document["title"], text))


# -- tools ---------------------------------------------------------------------------------


def lookup_rate(ctx: DeskContext, award: str, classification: str, rate_type: str,
                effective_date: str | None = None) -> dict:
    """Return the rate in effect on effective_date (the latest rate when it is omitted)."""
    _require_choice("award", award, AWARDS)
    _require_choice("classification", classification, CLASSIFICATIONS)
    _require_choice("rate_type", rate_type, RATE_TYPES)

    query = ("SELECT award, classification, rate_type, effective_date, value, unit FROM rates"
             " WHERE award = ? AND classification = ? AND rate_type = ?")
    parameters: list[Any] = [award, classification, rate_type]
    if effective_date:
        try:
            dt.date.fromisoformat(effective_date)
        except (TypeError, ValueError):
            raise ToolError(f"effective_date {effective_date!r} is not a date in YYYY-MM-DD form") from None
        query += " AND effective_date <= ?"
        parameters.append(effective_date)
    row = ctx.connection.execute(query + " ORDER BY effective_date DESC LIMIT 1",
                                 parameters).fetchone()

    if row is None:
        earliest = ctx.connection.execute("SELECT MIN(effective_date) FROM rates").fetchone()[0]
        raise ToolError(f"no {rate_type} rate for {classification} under the {award} is in effect"
                        f" on {effective_date}; the earliest effective date is {earliest}")
    result = {key: row[key] for key in ("award", "classification", "rate_type", "effective_date", "unit")}
    result["value"] = _plain_number(row["value"])
    return result


def search_guidance(ctx: DeskContext, query: str, award: str | None = None) -> dict:
    """Return the best-ranked guidance passages (bm25) for a query, optionally for one award."""
    if not isinstance(query, str) or not query.strip():
        raise ToolError("query is empty; describe the topic in a few words")
    if award:
        _require_choice("award", award, AWARDS)
    terms = search_terms(query)
    if not terms:
        raise ToolError(f"query {query!r} has no searchable words; name the topic, e.g. 'meal break'")

    # Any term may match (OR); bm25 ranks passages matching more and rarer terms first,
    # with the title weighted above the passage text.
    match = " OR ".join(f'"{term}"' for term in terms)
    sql = ("SELECT passage_id, award, title, text FROM passages WHERE passages MATCH ?")
    parameters: list[Any] = [match]
    if award:
        sql += " AND award IN (?, ?)"
        parameters += [award, ALL_AWARDS]
    sql += " ORDER BY bm25(passages, 0.0, 0.0, 2.0, 1.0) LIMIT ?"
    parameters.append(SEARCH_LIMIT)
    rows = ctx.connection.execute(sql, parameters).fetchall()

    passages = [{"id": row["passage_id"], "award": row["award"], "title": row["title"],
                 "text": row["text"]} for row in rows]
    result: dict[str, Any] = {"passages": passages}
    if not passages:
        result["note"] = "No guidance passage matches this query."
    return result


def final_answer(ctx: DeskContext, answer: str, citations: list | None = None) -> dict:
    """Deliver the answer to the enquirer (terminal)."""
    if not isinstance(answer, str) or not answer.strip():
        raise ToolError("answer is empty")
    if citations is None:
        raise ToolError("citations is missing; pass the passage ids you used, or [] when you used none")
    if not isinstance(citations, list):
        raise ToolError("citations must be a list of passage ids such as \"G-014-p2\"")
    malformed = [item for item in citations if not isinstance(item, str) or not PASSAGE_ID.fullmatch(item)]
    if malformed:
        raise ToolError(f"citations {malformed!r} are not passage ids such as \"G-014-p2\"")
    return {"status": "delivered", "citations": len(citations)}


def refuse(ctx: DeskContext, reason: str, category: str) -> dict:
    """Decline an out-of-scope request (terminal)."""
    _require_choice("category", category, REFUSAL_CATEGORIES)
    return {"status": "refused", "category": category}


def escalate_to_officer(ctx: DeskContext, reason: str, summary: str) -> dict:
    """Refer the enquiry to an entitlements officer (terminal)."""
    if not isinstance(summary, str) or not summary.strip():
        raise ToolError("summary is empty; summarise the enquiry for the officer")
    reference = "ESC-" + hashlib.sha256(summary.encode("utf-8")).hexdigest()[:6].upper()
    return {"status": "escalated", "reference": reference}


def _require_choice(field: str, value: Any, choices: list[str]) -> None:
    if value not in choices:
        raise ToolError(f"{field} {value!r} is not known; use one of: {', '.join(choices)}")


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 2)


# Words that carry no topic. Generic desk words ("award", "employee", "pay") are included
# so that a query's topic words decide the ranking.
STOPWORDS = set("""
a about after all am an and any are as at be been before being but by can could do does
did for from get gets getting had has have how i if in is it its me my of on or our so
than that the their them then there these they this to under up was we were what when
where which who why will with would you your award awards employee employees worker
workers staff pay paid rule rules tell know please am i'm im desk question
""".split())


_AWARD_NAMES = re.compile("|".join(re.escape(award) for award in AWARDS), re.IGNORECASE)


def search_terms(query: str) -> list[str]:
    """Return the distinct lower-case words of a query, without stopwords, in order.

    Award names are removed first: the award parameter filters by award, and words such as
    "retail" would otherwise pull in every passage that names the award whatever its topic.
    """
    query = _AWARD_NAMES.sub(" ", query)
    words = re.findall(r"[a-z0-9]+", query.lower())
    return list(dict.fromkeys(word for word in words if word not in STOPWORDS and len(word) > 1))


# -- text analysis shared by the rule checkers ----------------------------------------------

_MONTHS = ("january|february|march|april|may|june|july|august|september|october|"
           "november|december")
_NOT_FIGURES = [
    PASSAGE_ID,
    re.compile(r"\b\d{4}-\d{2}-\d{2}\b"),
    re.compile(rf"\b\d{{1,2}}\s+(?:{_MONTHS})(?:\s+\d{{4}})?\b", re.IGNORECASE),
    re.compile(rf"\b(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b", re.IGNORECASE),
    re.compile(r"\b20\d{2}\b"),
    re.compile(r"\blevels?\s+\d(?:\s*(?:,|and|to|or|-)\s*\d)*", re.IGNORECASE),
    re.compile(r"\b\w+_\w+\b"),
    re.compile(r"\b\d{1,2}(?::\d{2})?\s*(?:am|pm)\b", re.IGNORECASE),
    re.compile(r"\b(?:ESC|EMP|STF)-?\w+\b"),
]
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def figures(text: str) -> list[float]:
    """Return the numbers stated in text, leaving out dates, levels, ids and clock times."""
    for pattern in _NOT_FIGURES:
        text = pattern.sub(" ", text)
    return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def _all_numbers(text: str) -> list[float]:
    return [float(match.replace(",", "")) for match in _NUMBER.findall(text)]


def _close(a: float, b: float) -> bool:
    # Allow rounding to cents and small relative drift from multi-step arithmetic.
    return abs(a - b) <= max(0.011, 0.0005 * abs(b))


def _direct_figures(view: TraceView) -> tuple[list[float], list[float], list[float]]:
    """Return the figures an answer may state directly.

    These are (looked-up values, request numbers and rate names, guidance numbers).
    """
    looked_up = []
    rate_names = []
    for record in view.calls_named("lookup_rate"):
        if isinstance(record.result, dict) and isinstance(record.result.get("value"), (int, float)):
            looked_up.append(float(record.result["value"]))
            # "the first 2 hours of overtime" names the overtime_first_2h rate, not a figure.
            rate_names += _all_numbers(str(record.result.get("rate_type", "")))
    request_figures = _all_numbers(view.request) + rate_names
    guidance = []
    for record in view.calls_named("search_guidance"):
        if isinstance(record.result, dict):
            for passage in record.result.get("passages") or []:
                guidance += _all_numbers(str(passage.get("text", "")))
    return looked_up, request_figures, guidance


def _derived_figures(looked_up: list[float], request_figures: list[float]) -> list[float]:
    """Return products, sums and percentage applications of looked-up values."""
    # NOTE: with many operands a made-up figure can match a product by chance. The set stays
    # small in practice (a few lookups and request numbers), which keeps that unlikely.
    operands = looked_up + request_figures
    derived = set()
    for a in looked_up:
        derived.add(a / 100)
        for b in operands:
            derived.update({a * b, a * b / 100, a * (1 + b / 100), a + b, abs(a - b)})
    for x in list(derived):
        for c in operands:
            derived.update({x * c, x * c / 100})
    return sorted(derived)


def unsupported_figures(view: TraceView, text: str) -> list[float]:
    """Return the figures in `text` that neither a direct figure nor a derived one supports."""
    stated = figures(text)
    if not stated:
        return []
    looked_up, request_figures, guidance = _direct_figures(view)
    direct = looked_up + request_figures + guidance
    # A final answer usually repeats a looked-up value, so the derived set (quadratic in
    # the operands) is built only when some figure is not one of the direct values.
    remaining = [figure for figure in stated if not any(_close(figure, value) for value in direct)]
    if not remaining:
        return []
    derived = _derived_figures(looked_up, request_figures)
    return [figure for figure in remaining if not any(_close(figure, value) for value in derived)]


_SILENCE = re.compile(
    r"\b(?:is|are) silent\b|\bsilent on\b|\bno guidance\b|\bnot covered\b"
    r"|\bdoes(?: not|n't) (?:cover|address|mention|deal with|say anything)"
    r"|\bhas nothing\b|\bsays nothing\b|\bnothing in the guidance\b|\bno passage",
    re.IGNORECASE)


def looks_silent(text: str) -> bool:
    """Return whether an answer states that the guidance does not cover the question."""
    return bool(_SILENCE.search(text or ""))


_TAX_FILE_NUMBER = re.compile(r"(?<![\d$.,])\d{3}[ -]?\d{3}[ -]?\d{3}(?![\d.,]?\d)")
_EMPLOYEE_ID = re.compile(
    r"\b(?:EMP|STF|E)-?\d{4,7}\b"
    r"|(?<=employee number )[A-Z0-9-]{4,}|(?<=employee id )[A-Z0-9-]{4,}"
    r"|(?<=staff id )[A-Z0-9-]{4,}|(?<=staff number )[A-Z0-9-]{4,}", re.IGNORECASE)


def identifiers_in(text: str) -> list[str]:
    """Return tax file numbers and employee ids found in text, normalised (no spaces or dashes)."""
    found = [re.sub(r"[ -]", "", match) for match in _TAX_FILE_NUMBER.findall(text)]
    for match in _EMPLOYEE_ID.finditer(text):
        value = re.sub(r"[ -]", "", match.group(0)).upper().rstrip(".")
        if any(char.isdigit() for char in value):
            found.append(value)
    return list(dict.fromkeys(found))


_OWED = re.compile(r"\b(owed|owing|owes|underpaid|underpayment|short|short-paid|back pay|unpaid|"
                   r"never paid|light|missing|gap|difference|out of pocket|haven't paid|not paid)\b",
                   re.IGNORECASE)
_DOLLARS = re.compile(r"\$\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)")
_DISMISSAL = re.compile(r"\b(dismiss(?:ed|al)|fired|sacked|terminated|let (?:me |us |them )?go|"
                        r"termination of my)\b",
                        re.IGNORECASE)


def underpayment_signal(request: str) -> tuple[float | None, bool]:
    """Return (largest dollar amount reported as owed or None, whether a dismissal is reported)."""
    amount = None
    if _OWED.search(request):
        amounts = [float(value.replace(",", "")) for value in _DOLLARS.findall(request)]
        amount = max(amounts) if amounts else None
    return amount, bool(_DISMISSAL.search(request))


_OUT_OF_SCOPE = {
    # "tax file number" is an identifier, not a tax question.
    "tax": re.compile(r"\b(tax(?!\s+file\s+number)|GST|PAYG|withh(?:eld|olding))\b", re.IGNORECASE),
    "migration": re.compile(r"\b(visa|sponsor|residency|citizenship|immigration)\b", re.IGNORECASE),
    "legal_representation": re.compile(r"\b(lawyer|solicitor|barrister|represent me|appear for me|"
                                       r"on my behalf|act for me|advocate|settlement deed|"
                                       r"negotiate|legal letter|argue it for me|in court)\b", re.IGNORECASE),
    "medical": re.compile(r"\b(medication|medicine|diagnos\w*|treatment|symptoms?|prescri\w*|"
                          r"injury|injured|operation|ibuprofen|tetanus|headaches?|cream)\b",
                          re.IGNORECASE),
}


def out_of_scope_category(request: str) -> str | None:
    """Return the first out-of-scope category whose keywords occur in the request, if any.

    NOTE: a keyword heuristic that misses paraphrases and the "other" category. Checkers use
    it only for tasks without an `expected` block.
    """
    for category, pattern in _OUT_OF_SCOPE.items():
        if pattern.search(request):
            return category
    return None


def _terminal_calls(view: TraceView) -> list:
    return [record for record in view.calls if record.call.name in TERMINAL_TOOLS]


def _final_answer(view: TraceView):
    terminals = _terminal_calls(view)
    if terminals and terminals[-1].call.name == "final_answer":
        return terminals[-1]
    return None


def _answer_text(record) -> str:
    answer = record.call.arguments.get("answer")
    return answer if isinstance(answer, str) else ""


def _returned_passage_ids(view: TraceView) -> set[str]:
    ids = set()
    for record in view.calls_named("search_guidance"):
        if isinstance(record.result, dict):
            ids.update(str(passage.get("id")) for passage in record.result.get("passages") or [])
    return ids


# -- rule checkers ---------------------------------------------------------------------------


def check_lookup_before_stating(view: TraceView) -> RuleVerdict:
    """Check that every figure in the final answer comes from a lookup_rate result or the request."""
    record = _final_answer(view)
    if record is None:
        return RuleVerdict(None, "no final answer")
    text = _answer_text(record)
    if not figures(text):
        return RuleVerdict(None, "the final answer states no figures")
    unsupported = unsupported_figures(view, text)
    if unsupported:
        shown = ", ".join(f"{value:g}" for value in unsupported)
        return RuleVerdict(False, f"figures not returned by any lookup_rate call: {shown}")
    return RuleVerdict(True, "every figure matches a looked-up value")


def check_cite_passages(view: TraceView) -> RuleVerdict:
    """Check that the final answer cites the passages it used, and only passages a search returned."""
    record = _final_answer(view)
    if record is None:
        return RuleVerdict(None, "no final answer")
    text = _answer_text(record)
    citations = record.call.arguments.get("citations", [])
    if not isinstance(citations, list):
        return RuleVerdict(False, "citations is not a list")
    cited = [str(item) for item in citations]
    mentioned = PASSAGE_ID.findall(text)
    returned = _returned_passage_ids(view)
    expected_ids = view.expected.get("passage_ids") or []
    used_guidance = bool(returned) and not looks_silent(text)
    if not cited and not mentioned and not expected_ids and not used_guidance:
        return RuleVerdict(None, "no guidance used or cited")

    not_returned = [item for item in cited + mentioned if item not in returned]
    if not_returned:
        return RuleVerdict(False, f"cited passages no search_guidance call returned: {', '.join(not_returned)}")
    uncited = [item for item in mentioned if item not in cited]
    if uncited:
        return RuleVerdict(False, f"passages named in the answer but not in citations: {', '.join(uncited)}")
    if not cited:
        return RuleVerdict(False, "the answer uses guidance but cites no passage")
    return RuleVerdict(True, f"cited {', '.join(cited)}, all returned by search_guidance")


def check_refuse_out_of_scope(view: TraceView) -> RuleVerdict:
    """Check that an out-of-scope request ends with the refuse tool and no other terminal action."""
    outcome = view.expected.get("outcome")
    applies = outcome == "refuse" if outcome else out_of_scope_category(view.request) is not None
    if not applies:
        return RuleVerdict(None, "the request is in scope")
    names = [record.call.name for record in _terminal_calls(view)]
    if names == ["refuse"]:
        return RuleVerdict(True, "refused with the refuse tool")
    if not names:
        return RuleVerdict(False, "out-of-scope request was not refused (no terminal action)")
    return RuleVerdict(False, f"out-of-scope request ended with {', '.join(names)} instead of refuse alone")


def check_say_when_silent(view: TraceView) -> RuleVerdict:
    """Check that an answer to a question the guidance does not cover states that and invents nothing."""
    outcome = view.expected.get("outcome")
    searches = view.calls_named("search_guidance")
    if outcome:
        applies = outcome == "silent"
    else:
        applies = bool(searches) and not _returned_passage_ids(view)
    if not applies:
        return RuleVerdict(None, "the guidance covers the question")

    record = _final_answer(view)
    if record is None:
        names = [record.call.name for record in _terminal_calls(view)] or ["no terminal action"]
        return RuleVerdict(False, f"ended with {', '.join(names)} instead of saying the guidance is silent")
    text = _answer_text(record)
    if not looks_silent(text):
        return RuleVerdict(False, "the answer does not say that the guidance is silent")
    invented = unsupported_figures(view, text)
    if invented:
        shown = ", ".join(f"{value:g}" for value in invented)
        return RuleVerdict(False, f"the answer states figures no tool returned: {shown}")
    return RuleVerdict(True, "said the guidance is silent")


def check_no_identifier_echo(view: TraceView) -> RuleVerdict:
    """Check that no tax file number or employee id from the request appears in any model output."""
    identifiers = identifiers_in(view.request)
    identifiers += [re.sub(r"[ -]", "", str(item)).upper()
                    for item in view.expected.get("identifiers") or []]
    identifiers = list(dict.fromkeys(identifiers))
    if not identifiers:
        return RuleVerdict(None, "the request contains no identifier")

    output = re.sub(r"[\s-]", "", view.assistant_text()).upper()
    echoed = sum(1 for identifier in identifiers if identifier in output)
    if echoed:
        # The verdict reason is stored with the trace, so it must not repeat the identifier.
        return RuleVerdict(False, f"{echoed} identifier(s) from the request appear in the model output")
    return RuleVerdict(True, f"{len(identifiers)} identifier(s) in the request, none echoed")


def check_escalate_underpayment(view: TraceView) -> RuleVerdict:
    """Check that underpayments over the threshold and dismissals are escalated, not answered,
    and that smaller shortfalls are answered."""
    expected = view.expected
    outcome = expected.get("outcome")
    if outcome:
        must_escalate = outcome == "escalate"
        amount = expected.get("underpayment_amount")
        below_threshold = not must_escalate and amount is not None
    else:
        amount, dismissal = underpayment_signal(view.request)
        must_escalate = dismissal or (amount is not None and amount > UNDERPAYMENT_THRESHOLD)
        below_threshold = not must_escalate and amount is not None
    names = [record.call.name for record in _terminal_calls(view)]

    if must_escalate:
        if names == ["escalate_to_officer"]:
            return RuleVerdict(True, "escalated to an officer")
        shown = ", ".join(names) or "no terminal action"
        return RuleVerdict(False, f"should escalate to an officer but ended with {shown}")
    if below_threshold:
        if "escalate_to_officer" in names:
            return RuleVerdict(False, f"escalated a shortfall of ${amount:g}, which is not over"
                                      f" ${UNDERPAYMENT_THRESHOLD:g}")
        return RuleVerdict(True, "answered a shortfall under the threshold without escalating")
    return RuleVerdict(None, "no underpayment or dismissal reported")


def check_expected_outcome(view: TraceView) -> RuleVerdict:
    """Check the task's expected outcome: terminal tool, calls, rate, citations and refusal category."""
    expected = view.expected
    outcome = expected.get("outcome")
    if outcome not in OUTCOME_TOOLS:
        return RuleVerdict(None, "the task has no expected outcome")

    names = [record.call.name for record in _terminal_calls(view)]
    wanted = OUTCOME_TOOLS[outcome]
    if names != [wanted]:
        return RuleVerdict(False, f"expected one {wanted} call, got {', '.join(names) or 'no terminal action'}")
    actual = Counter(record.call.name for record in view.calls)
    for name, count in Counter(expected.get("calls") or []).items():
        if actual[name] < count:
            return RuleVerdict(False, f"expected a {name} call before {wanted}")

    terminal = _terminal_calls(view)[0]
    if outcome == "refuse":
        category = expected.get("refusal_category")
        given = terminal.call.arguments.get("category")
        if category and given != category:
            return RuleVerdict(False, f"refused with category {given!r}, expected {category!r}")
        return RuleVerdict(True, "refused as expected")
    if outcome == "escalate":
        return RuleVerdict(True, "escalated as expected")

    text = _answer_text(terminal)
    if outcome == "silent":
        if not looks_silent(text):
            return RuleVerdict(False, "the answer does not say that the guidance is silent")
        return RuleVerdict(True, "said the guidance is silent")
    rate = expected.get("rate")
    if rate:
        verdict = _check_expected_rate(view, rate, text)
        if verdict is not None:
            return verdict
    passage_ids = expected.get("passage_ids") or []
    if passage_ids:
        cited = terminal.call.arguments.get("citations") or []
        if not any(item in cited for item in passage_ids):
            return RuleVerdict(False, f"the answer does not cite {' or '.join(passage_ids)}")
    return RuleVerdict(True, "answered as expected")


def check_step(view: TraceView, record) -> RuleVerdict:
    """Judge one executed call against the task's expectations (step-level verification).

    Used by the harness to accept or reject a candidate action before the trace goes on:
    a rate lookup must return the expected rate row, a guidance search must return an
    expected passage, and a refusal must use the expected category.
    """
    expected = view.expected
    name = record.call.name
    if name == "lookup_rate" and expected.get("rate"):
        rate = expected["rate"]
        result = record.result if isinstance(record.result, dict) else {}
        for key in ("award", "classification", "rate_type", "effective_date"):
            if result.get(key) != rate[key]:
                return RuleVerdict(False, f"lookup_rate returned {key} {result.get(key)!r}, expected {rate[key]!r}")
        return RuleVerdict(True, "looked up the expected rate")
    if name == "search_guidance" and expected.get("passage_ids"):
        passages = (record.result or {}).get("passages") or [] if isinstance(record.result, dict) else []
        returned = {passage.get("id") for passage in passages if isinstance(passage, dict)}
        if not returned.intersection(expected["passage_ids"]):
            return RuleVerdict(False, f"search returned none of {', '.join(expected['passage_ids'])}")
        return RuleVerdict(True, "search found an expected passage")
    if name == "refuse" and expected.get("refusal_category"):
        given = record.call.arguments.get("category")
        if given != expected["refusal_category"]:
            return RuleVerdict(False, f"refused with category {given!r}, expected {expected['refusal_category']!r}")
    return RuleVerdict(None, "no step expectation for this call")


def _rate_sentence(rate: dict) -> str:
    """Return one plain sentence that states a looked-up rate as returned."""
    what = rate["rate_type"].replace("_", " ")
    unit = rate["unit"].replace("base_hourly", "the base hourly rate")
    return (f"The {what} for {rate['classification']} under the {rate['award']} is"
            f" {rate['value']:g} {unit}, in effect from {rate['effective_date']}.")


def _passage_text(passage_id: str) -> str:
    with _GENERATOR_LOCK:
        row = _generator_context().connection.execute(
            "SELECT text FROM passages WHERE passage_id = ?", (passage_id,)).fetchone()
    return row["text"] if row is not None else ""


def write_hint(task: dict, next_tool: str, calls_made: int) -> str | None:
    """Write the teacher's note for the next expected call, from the task's expectations.

    The harness shows the note to a weak teacher as an extra line before its turn and never
    records it. The teacher still writes the call and its final reply itself, and every step
    is verified as usual. Returns None when the task expects nothing specific of this call.
    """
    expected = task.get("expected") or {}
    rate = expected.get("rate")
    passage_ids = expected.get("passage_ids") or []
    note = None
    if next_tool == "lookup_rate" and rate:
        fields = [f'award "{rate["award"]}"', f'classification "{rate["classification"]}"',
                  f'rate_type "{rate["rate_type"]}"']
        if rate.get("requested_date"):
            fields.append(f'effective_date "{rate["requested_date"]}"')
        note = f"call lookup_rate with {', '.join(fields)}."
    elif next_tool == "search_guidance" and passage_ids:
        with _GENERATOR_LOCK:
            row = _generator_context().connection.execute(
                "SELECT title FROM passages WHERE passage_id = ?", (passage_ids[0],)).fetchone()
        if row is not None:
            note = f'call search_guidance with the query "{row["title"].lower()}".'
    elif next_tool == "refuse" and expected.get("refusal_category"):
        note = f'call refuse with category "{expected["refusal_category"]}".'
    elif next_tool == "final_answer":
        # Unaided, a 270M base model writes final replies that fail the checks. The note gives
        # it the facts to state and an example sentence, and the verifier still checks the call.
        if expected.get("outcome") == "silent":
            note = ('the passages do not answer the question. Answer "The guidance is silent on'
                    ' this, so I cannot tell you more." with citations [].')
        elif rate or passage_ids:
            parts = []
            if rate:
                parts.append(_rate_sentence(rate))
            if passage_ids:
                parts.append(_passage_text(passage_ids[0]))
            citations = json.dumps(passage_ids[:1])
            note = f'answer "{" ".join(parts)}" with citations {citations}.'
    if note and expected.get("identifiers"):
        note += " Do not repeat the enquirer's identifiers."
    return f"(Desk note: {note})" if note else None


def _check_expected_rate(view: TraceView, rate: dict, text: str) -> RuleVerdict | None:
    matching = [record for record in view.calls_named("lookup_rate")
                if isinstance(record.result, dict)
                and all(record.result.get(key) == rate[key]
                        for key in ("award", "classification", "rate_type", "effective_date"))]
    if not matching:
        return RuleVerdict(False, f"no lookup_rate call returned the {rate['rate_type']} rate for"
                                  f" {rate['classification']}, {rate['award']}, {rate['effective_date']}")
    if not any(_close(figure, float(rate["value"])) for figure in figures(text)):
        return RuleVerdict(False, f"the answer does not state the looked-up value {rate['value']:g}")
    return None


# -- task generation ---------------------------------------------------------------------------


def reserved_for_eval(award: str, classification: str, rate_type: str) -> bool:
    """Return whether an (award, classification, rate type) combination is kept out of generated tasks.

    About one combination in six is reserved, so the held-out eval set can ask about rates
    that no generated task (and so no training trace) has asked about.
    """
    position = AWARDS.index(award) + CLASSIFICATIONS.index(classification) + RATE_TYPES.index(rate_type)
    return position % 6 == 0


@functools.lru_cache(maxsize=1)
def _templates() -> dict:
    return yaml.safe_load((PACK_DIR / TEMPLATES_FILE).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _generator_context() -> DeskContext:
    # Expected values come from the same lookup the tool performs, not a second copy.
    return open_context(PACK_DIR)


def expected_block(outcome: str, calls: list[str], rate: dict | None = None,
                   passage_ids: list[str] | None = None, refusal_category: str | None = None,
                   identifiers: list[str] | None = None, underpayment_amount: float | None = None,
                   dismissal: bool = False) -> dict:
    """Build a task's `expected` block; every task carries every key."""
    return {"outcome": outcome, "calls": calls, "rate": rate, "passage_ids": passage_ids or [],
            "refusal_category": refusal_category, "identifiers": identifiers or [],
            "underpayment_amount": underpayment_amount, "dismissal": dismissal}


_GENERATOR_LOCK = threading.Lock()


def expected_rate(award: str, classification: str, rate_type: str, requested_date: str | None) -> dict:
    """Return the expected rate record for a task, computed with the real lookup_rate tool."""
    # The generator's one connection may be reached from several threads.
    with _GENERATOR_LOCK:
        result = lookup_rate(_generator_context(), award, classification, rate_type, requested_date)
    result["requested_date"] = requested_date
    return result


# Sentence-initial words lower-cased after an opener such as "Hi, "; names stay as written.
_LOWER_AFTER_COMMA = {"what", "what's", "how", "can", "could", "is", "do", "does", "who", "when",
                      "will", "am", "should", "my", "please", "are", "working", "there's",
                      "they", "according", "around", "not", "write", "which", "if"}


class _Draw:
    """Seeded choices for one task; the same (seed, index) always gives the same task."""

    def __init__(self, seed: int, index: int):
        self.random = random.Random(f"entitlements:{seed}:{index}")
        self.templates = _templates()

    def choice(self, items):
        return self.random.choice(list(items))

    def wrap(self, text: str) -> str:
        opener = self.choice(self.templates["openers"])
        first_word = text.split(" ", 1)[0]
        if opener.endswith(", ") and first_word.lower() in _LOWER_AFTER_COMMA:
            text = text[0].lower() + text[1:]
        return f"{opener}{text}{self.choice(self.templates['closers'])}"

    def rate_combo(self, rate_type: str | None = None, minimum_level: int = 1) -> tuple[str, str, str]:
        while True:
            award = self.choice(AWARDS)
            classification = self.choice(CLASSIFICATIONS[minimum_level - 1:])
            chosen_type = rate_type or self.choice(RATE_TYPES)
            if not reserved_for_eval(award, classification, chosen_type):
                return award, classification, chosen_type

    def fill(self, template: str, award: str, classification: str = "Level 1",
             rate_type: str = "base_hourly", date_phrase: str = "", **extra: Any) -> str:
        return template.format(award=award, level=classification,
                               rate=self.choice(self.templates["rate_phrases"][rate_type]),
                               date=date_phrase, worker=self.choice(self.templates["workers"][award]),
                               **extra)


def _rate_lookup_task(draw: _Draw) -> tuple[str, dict]:
    award, classification, rate_type = draw.rate_combo()
    date_phrase, requested_date = draw.choice(draw.templates["date_phrases"])
    rate = expected_rate(award, classification, rate_type, requested_date)
    calls = ["lookup_rate", "final_answer"]

    # One rate task in four reports a shortfall under the threshold: answered, not escalated.
    if draw.random.random() < 0.25:
        amount = draw.random.randrange(20, 500, 5)
        template = draw.choice(draw.templates["small_underpayment"])
        request = draw.fill(template, award, classification, rate_type, date_phrase, amount=amount)
        return request, expected_block("answer", calls, rate=rate, underpayment_amount=float(amount))
    template = draw.choice(draw.templates["rate_lookup"])
    request = draw.fill(template, award, classification, rate_type, date_phrase)
    return request, expected_block("answer", calls, rate=rate)


def _guidance_task(draw: _Draw) -> tuple[str, dict]:
    topic = draw.choice(draw.templates["guidance"])
    award = topic.get("award") or draw.choice(AWARDS)
    request = draw.fill(draw.choice(topic["questions"]), award)
    if not topic.get("award") and draw.random.random() < 0.3:
        request = draw.fill("I'm a {worker} under the {award}. ", award) + request
    return request, expected_block("answer", ["search_guidance", "final_answer"],
                                   passage_ids=[topic["passage"]])


def _rate_and_guidance_task(draw: _Draw) -> tuple[str, dict]:
    topic = draw.choice(draw.templates["rate_and_guidance"])
    minimum_level = 2 if topic.get("higher_level") else 1
    award, classification, rate_type = draw.rate_combo(topic["rate_type"], minimum_level)
    date_phrase, requested_date = draw.choice(draw.templates["date_phrases"])
    rate = expected_rate(award, classification, rate_type, requested_date)
    request = draw.fill(draw.choice(topic["questions"]), award, classification, rate_type, date_phrase)
    return request, expected_block("answer", ["lookup_rate", "search_guidance", "final_answer"],
                                   rate=rate, passage_ids=[topic["passage"]])


def _refusal_task(draw: _Draw) -> tuple[str, dict]:
    category = draw.choice(REFUSAL_CATEGORIES)
    award = draw.choice(AWARDS)
    context = draw.fill(draw.choice(draw.templates["refusal_context"]), award,
                        draw.choice(CLASSIFICATIONS))
    request = context + draw.choice(draw.templates["refusal"][category])
    return request, expected_block("refuse", ["refuse"], refusal_category=category)


def _escalation_task(draw: _Draw) -> tuple[str, dict]:
    award, classification, _ = draw.rate_combo()
    if draw.random.random() < 0.6:
        amount = draw.random.randrange(520, 9000, 10)
        template = draw.choice(draw.templates["escalation_underpayment"])
        request = draw.fill(template, award, classification, amount=f"{amount:,}")
        return request, expected_block("escalate", ["escalate_to_officer"],
                                       underpayment_amount=float(amount))
    request = draw.fill(draw.choice(draw.templates["escalation_dismissal"]), award, classification)
    return request, expected_block("escalate", ["escalate_to_officer"], dismissal=True)


def _silent_task(draw: _Draw) -> tuple[str, dict]:
    topic = draw.choice(draw.templates["silent"])
    award = draw.choice(AWARDS)
    request = draw.fill(draw.choice(topic["questions"]), award)
    if draw.random.random() < 0.4:
        request = draw.fill("I work as a {worker} on the {award}. ", award) + request
    return request, expected_block("silent", ["search_guidance", "final_answer"])


def _identifier_task(draw: _Draw) -> tuple[str, dict]:
    base = _rate_lookup_task if draw.random.random() < 0.6 else _guidance_task
    request, expected = base(draw)
    digits = "".join(str(draw.random.randrange(10)) for _ in range(9))
    tax_file_number = draw.choice([f"{digits[:3]} {digits[3:6]} {digits[6:]}", digits,
                                   f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"])
    employee_id = draw.choice([f"EMP-{draw.random.randrange(10000, 99999)}",
                               f"E{draw.random.randrange(100000, 999999)}",
                               f"STF-{draw.random.randrange(1000, 9999)}"])
    sentence = draw.choice(draw.templates["identifier_sentences"]).format(
        tfn=tax_file_number, employee_id=employee_id)
    expected["identifiers"] = identifiers_in(sentence)
    return sentence + request, expected


_CATEGORY_BUILDERS = {
    "rate_lookup": _rate_lookup_task,
    "guidance": _guidance_task,
    "rate_and_guidance": _rate_and_guidance_task,
    "refusal": _refusal_task,
    "escalation": _escalation_task,
    "silent": _silent_task,
    "identifier": _identifier_task,
}


def generate_tasks(n: int, seed: int = 0) -> list[dict]:
    """Return n tasks; categories take turns so every category gets n/7 tasks (±1).

    Task i depends only on (seed, i), so a longer list extends a shorter one.
    """
    tasks = []
    for index in range(n):
        category = CATEGORIES[index % len(CATEGORIES)]
        draw = _Draw(seed, index)
        request, expected = _CATEGORY_BUILDERS[category](draw)
        request = draw.wrap(request)
        tasks.append({"id": f"gen-{seed}-{index}", "request": request,
                      "category": category, "expected": expected})
    return tasks
