"""Build prompts/teacher.md, the entitlements pack's prompt for a guided, hinted teacher.

The teacher prompt is the full prompt's instructions followed by worked examples in which a
desk note comes before some turns, written by the pack's own `write_hint`, exactly as the
harness shows hints with `--hints`. A weak base model copies what its examples show, so
examples that follow their notes teach it to follow the notes of the task at hand. Tool
results come from the real tools. The output is deterministic, and
tests/test_pack_step_checker.py checks that the file is up to date.

    .venv/bin/python tools/entitlements/prompts/build_teacher.py
"""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent
OUTPUT = PROMPTS / "teacher.md"
FOLLOW_NOTES = "When a line starting with (Desk note: comes before your turn, do exactly what it says."


def render_teacher_prompt() -> str:
    from appliance.chat import ToolCall
    from appliance.packs import load_pack

    pack = load_pack(PROMPTS.parent)
    impl = pack.module
    ctx = pack.make_context()

    def title(passage_id: str) -> str:
        row = ctx.connection.execute("SELECT title FROM passages WHERE passage_id = ?",
                                     (passage_id,)).fetchone()
        return row["title"].lower()

    def example(request: str, expected: dict, calls: list[tuple[str, dict]]) -> str:
        task = {"expected": expected}
        lines = [f"User: {request}"]
        for made, (name, arguments) in enumerate(calls):
            note = impl.write_hint(task, name, made)
            if note:
                lines.append(note)
            lines.append(f"Model: <tool_call>{ToolCall(name, arguments).to_text()}</tool_call>"
                         "<end_of_turn>")
            result = pack.tools[name].function(ctx, **arguments)
            lines.append("Tool: " + json.dumps({"name": name, "result": result},
                                               ensure_ascii=False, sort_keys=True))
        return "\n".join(lines)

    rate = impl.expected_rate("Harbourside Cleaning Services Award", "Level 2",
                              "saturday_penalty", "2026-03-01")
    examples = [
        example("What was the Saturday rate for a Level 2 cleaner on the Harbourside Cleaning "
                "Services Award in March 2026?",
                impl.expected_block("answer", ["lookup_rate", "final_answer"], rate=rate),
                [("lookup_rate", {"award": rate["award"], "classification": "Level 2",
                                  "rate_type": "saturday_penalty", "effective_date": "2026-03-01"}),
                 ("final_answer", {"answer": impl._rate_sentence(rate), "citations": []})]),
        example("Does my employer have to pay for washing the uniform they make me wear?",
                impl.expected_block("answer", ["search_guidance", "final_answer"],
                                    passage_ids=["G-015-p1"]),
                [("search_guidance", {"query": title("G-015-p1")}),
                 ("final_answer", {"answer": impl._passage_text("G-015-p1"),
                                   "citations": ["G-015-p1"]})]),
        example("Can my manager sponsor my work visa so I can stay longer?",
                impl.expected_block("refuse", ["refuse"], refusal_category="migration"),
                [("refuse", {"category": "migration",
                             "reason": "The desk cannot advise on visas or migration; please "
                                       "contact the immigration department or a registered "
                                       "migration agent."})]),
        example("I was let go yesterday without any warning after two years at the Regional "
                "Retail Award store. What are my options?",
                impl.expected_block("escalate", ["escalate_to_officer"], dismissal=True),
                [("escalate_to_officer", {"reason": "Reported dismissal.",
                                          "summary": "Enquirer under the Regional Retail Award "
                                                     "reports being dismissed without warning "
                                                     "after two years."})]),
        example("Is there an allowance for staff who bring their own knives to work?",
                impl.expected_block("silent", ["search_guidance", "final_answer"]),
                [("search_guidance", {"query": "allowance own knives"}),
                 ("final_answer", {"answer": "The guidance is silent on this, so I cannot tell "
                                             "you more.", "citations": []})]),
        example("Will you act as my lawyer at the tribunal hearing next week?",
                impl.expected_block("refuse", ["refuse"], refusal_category="legal_representation"),
                [("refuse", {"category": "legal_representation",
                             "reason": "The desk cannot represent you; please contact a lawyer "
                                       "or a community legal centre."})]),
    ]

    full = (PROMPTS / "full.md").read_text(encoding="utf-8")
    instructions = full.split("## Examples")[0].rstrip()
    body = "\n\n".join(f"### Example {number}\n\n{text}"
                       for number, text in enumerate(examples, start=1))
    return f"{instructions}\n\n{FOLLOW_NOTES}\n\n## Examples\n\n{body}\n"


if __name__ == "__main__":
    OUTPUT.write_text(render_teacher_prompt(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
