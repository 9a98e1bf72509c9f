"""Build eval/heldout.jsonl, the entitlements pack's held-out eval set.

The phrasings below are written for the eval set only, and none of them is a generator
template. tests/test_pack_entitlements_eval.py checks that no eval request is a near-duplicate
of a generated one. Rate cases use the (award, classification, rate type) combinations that
`impl.reserved_for_eval` keeps out of generated tasks. Expected rate values come from the
real lookup_rate tool. The output is deterministic: run it again and the file is unchanged.

Lines follow the appliance's eval-set format (appliance/evaluation/evalset.py), which takes
either `ground_truth` or `expected_calls`, not both. A one-call case (refuse, escalate)
gives `ground_truth`. A multi-step case gives the ordered `expected_calls`, whose first
entry is the first decision. The top-level `expected_outcome` is the outcome that the
generic checker observes from the last call. A case where the guidance is silent ends in
final_answer, so it has "answer" there. Its task's `expected.outcome` is "silent", which the
pack's task checker and the say-when-silent rule read.

    .venv/bin/python tools/entitlements/eval/build_heldout.py
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
OUTPUT = PACK_DIR / "eval" / "heldout.jsonl"


def _load_impl():
    spec = importlib.util.spec_from_file_location("entitlements_impl_for_eval", PACK_DIR / "impl.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


impl = _load_impl()

ANY_ANSWER = {"final_answer": {"answer": ["$any"], "citations": ["$any"]}}
ANY_ESCALATION = {"escalate_to_officer": {"reason": ["$any"], "summary": ["$any"]}}

# -- rate questions ------------------------------------------------------------------------

RATE_WORDS = {
    "base_hourly": "hourly wage before any penalties",
    "casual_loading": "loading percentage paid to casuals",
    "saturday_penalty": "percentage paid for Saturday hours",
    "sunday_penalty": "percentage paid for Sunday hours",
    "public_holiday": "percentage paid for hours on a public holiday",
    "overtime_first_2h": "percentage for the opening two hours of overtime",
    "night_shift_allowance": "hourly allowance for working nights",
    "meal_allowance": "amount paid as a meal allowance when overtime runs on",
}

# (phrase, effective_date argument choices in BFCL form, date used for the expected rate)
RATE_DATES = [
    ("", ["", "2026-07-01"], None),
    (" under the rates that started on 1 July 2025", ["2025-07-01"], "2025-07-01"),
    (" under the figures that began on 1 July 2026", ["2026-07-01"], "2026-07-01"),
    (" for hours I worked on 9 February 2026", ["2026-02-09", "2025-07-01"], "2026-02-09"),
    (" right now", ["", "2026-07-01"], None),
    (" for a shift back on 2 September 2025", ["2025-09-02", "2025-07-01"], "2025-09-02"),
]

RATE_TEMPLATES = [
    "My payroll team has me down as {level} on the {award}. What is the {words}{date}?",
    "Our venue is checking its figures: {award}, {level}. Give us the {words}{date}.",
    "I've just been promoted to {level} under the {award}. Could you find the {words}{date}?",
    "For a {level} role covered by the {award}, what {words} should be paid{date}?",
    "Settling an argument at work: under the {award}, what's the {words} at {level}{date}?",
    "New starter here, employed at {level} on the {award}. Which {words} applies to me{date}?",
    "I run payroll for a small business on the {award}. For {level}, what is the {words}{date}?",
    "Checking my contract. It says {award}, {level}. Please confirm the {words}{date}.",
    "What does the {award} set as the {words} for someone graded {level}{date}?",
    "Before I sign the roster I'd like the {words} for {level} staff on the {award}{date}.",
    "Help me read my pay slip: {level}, {award}. What {words} ought to appear{date}?",
    "Could the desk confirm the {words} that a {level} person earns under the {award}{date}?",
]

SHORTFALL_TEMPLATES = [
    ("My last pay came up ${amount} short, nothing dramatic. What is the {words} for {level} on the {award}{date}?", "$"),
    ("I'm out of pocket by about ${amount} this month, so I want to check the {words} for {level} under the {award}{date}.", "$"),
    ("Payroll owes me ${amount} from one shift and they've promised to fix it. Meanwhile, what is the {words} at {level} on the {award}{date}?", "$"),
]
SHORTFALL_AMOUNTS = [500, 75, 480, 260.5, 12, 395]

# -- guidance questions ---------------------------------------------------------------------

# (passage id, award named in the question or None, question)
GUIDANCE_QUESTIONS = [
    ("G-001-p1", None, "My boss let me go home after an hour on a quiet night. As a casual, what's the least I should be paid for that shift?"),
    ("G-001-p2", None, "The cafe texted me at 9 pm to say tomorrow's casual shift is off. Am I still owed the minimum engagement?"),
    ("G-002-p1", None, "I've done the same casual hours every week for thirteen months. Does my employer need to offer me a permanent spot?"),
    ("G-002-p2", None, "Is the business allowed to say no when a casual asks to convert to permanent?"),
    ("G-003-p1", None, "I finish at midnight and I'm rostered on again at 6 am. How much rest between shifts is required?"),
    ("G-003-p2", None, "I had only eight hours off between shifts last week. How should the next shift have been paid?"),
    ("G-004-p1", "Coastal Hospitality Award", "On the Coastal Hospitality Award, how long can I work before my unpaid meal break must start?"),
    ("G-004-p2", "Coastal Hospitality Award", "The head chef kept me on the line through my meal break. Under the Coastal Hospitality Award, how should that time be paid?"),
    ("G-005-p1", None, "I was asked at 4 pm to stay two extra hours. Does a meal allowance become payable?"),
    ("G-006-p1", None, "How do you turn a Sunday penalty percentage into an hourly amount?"),
    ("G-006-p2", None, "Easter Sunday is a public holiday and a Sunday. Do I get both penalties on top of each other?"),
    ("G-007-p1", None, "Why is there a casual loading at all?"),
    ("G-007-p2", None, "As a casual working a Saturday, do I get my casual loading as well as the weekend penalty?"),
    ("G-008-p1", None, "At what point in the week do my hours become overtime?"),
    ("G-008-p2", None, "My manager offered me time in lieu instead of overtime pay. How does that have to work?"),
    ("G-009-p1", None, "Does a shift from 6 pm to 2 am count as a night shift?"),
    ("G-009-p2", None, "If my night shift falls on a Saturday, is the night shift allowance paid in addition to the Saturday penalty?"),
    ("G-010-p2", None, "Our workplace wants to move the public holiday to a different day. Is that allowed?"),
    ("G-011-p1", None, "How many days ahead must my employer publish the roster?"),
    ("G-011-p2", None, "My shift was moved with one day's warning. What notice is required for roster changes?"),
    ("G-012-p2", None, "My pay slip only shows one total. What details is it supposed to list?"),
    ("G-013-p2", None, "I left my job in March. Can I get my timesheets and wage records from them, and how fast?"),
    ("G-014-p1", "Coastal Hospitality Award", "I work a lunch and a dinner session at a restaurant under the Coastal Hospitality Award. What's the maximum spread of a split shift?"),
    ("G-015-p1", "Coastal Hospitality Award", "The bistro wants me to buy my own branded shirts. Is that allowed on the Coastal Hospitality Award?"),
    ("G-016-p1", "Regional Retail Award", "Working an eight-hour day at the supermarket on the Regional Retail Award, how many paid rest breaks am I owed?"),
    ("G-017-p1", "Regional Retail Award", "We're doing an after-hours stocktake on Sunday night. Under the Regional Retail Award, is that overtime?"),
    ("G-018-p2", "Harbourside Cleaning Services Award", "I drive between three office buildings during one cleaning shift. Under the Harbourside Cleaning Services Award, is the driving time paid?"),
    ("G-019-p2", "Harbourside Cleaning Services Award", "My gloves wore through and the supervisor wants me to pay for new ones. Can they, under the Harbourside Cleaning Services Award?"),
    ("G-020-p2", "Inland Warehousing Award", "My forklift licence is due for renewal. Under the Inland Warehousing Award, who covers the fee?"),
    ("G-021-p1", "Inland Warehousing Award", "I pick orders in the minus 20 freezer. What warming breaks does the Inland Warehousing Award give?"),
    ("G-022-p1", None, "I'm brand new to the industry. How long can I stay at the introductory level?"),
    ("G-022-p2", None, "I now lead a crew of four. Which levels are meant for supervisors?"),
    ("G-023-p2", None, "I covered the supervisor's duties for just one hour yesterday. Do I get the higher rate for the whole day or only that hour?"),
    ("G-024-p2", None, "I'm a casual. Why don't I accrue any paid annual leave?"),
    ("G-025-p1", None, "I was off sick for three days in a row. Can my employer ask me for evidence?"),
    ("G-026-p1", None, "Can a casual worker take paid family and domestic violence leave?"),
    ("G-027-p2", None, "I asked for flexible hours five weeks ago and have heard nothing. How long does the employer have to reply?"),
    ("G-028-p1", None, "I'm at Level 2 and want to resign. How much notice do I have to give?"),
    ("G-029-p2", None, "I'm told to work from home two days a week. Is there an extra allowance for that?"),
    ("G-030-p2", None, "They rang me at 10 pm to come back in for an hour. What's the minimum I get paid for a recall?"),
    ("G-031-p2", None, "The new rates came out on 1 July but my pay hasn't changed. From which pay period should they apply?"),
    ("G-032-p1", "Coastal Hospitality Award", "My cafe under the Coastal Hospitality Award keeps the tip jar money to top up our wages. Is that allowed?"),
]

# -- questions needing a rate and a passage --------------------------------------------------

# (passage id, rate type, template, use the higher classification)
RATE_AND_GUIDANCE = [
    ("G-006-p1", "saturday_penalty", "Explain how Saturday pay is worked out for a {level} employee on the {award}, and give the Saturday percentage{date}.", False),
    ("G-006-p1", "sunday_penalty", "I'm picking up Sundays at {level} under the {award}. How is the Sunday figure applied to my pay, and what is it{date}?", False),
    ("G-005-p1", "meal_allowance", "My supervisor kept me late with no warning yesterday. Do I qualify for the meal allowance, and what's it worth at {level} on the {award}{date}?", False),
    ("G-007-p1", "casual_loading", "What does the casual loading replace, and how big is it for {level} casuals on the {award}{date}?", False),
    ("G-008-p1", "overtime_first_2h", "When do my hours tip into overtime, and what percentage applies to the first couple of overtime hours at {level} under the {award}{date}?", False),
    ("G-009-p1", "night_shift_allowance", "I start at 10 pm and finish at 4 am. Is that a night shift, and what is the night allowance at {level} on the {award}{date}?", False),
    ("G-010-p1", "public_holiday", "I'm rostered on Christmas Day at {level} under the {award}. How are public holiday hours paid, and at what percentage{date}?", False),
    ("G-023-p1", "base_hourly", "I filled in as {level} for an entire shift. What's the rule for higher duties, and what hourly wage does {level} get on the {award}{date}?", True),
    ("G-031-p2", "base_hourly", "When does each year's pay rise kick in, and what's the hourly wage for {level} under the {award}{date}?", False),
]

# -- out-of-scope requests ------------------------------------------------------------------

REFUSALS = [
    ("tax", "My second job pushed up my income. Should I ask for extra tax to come out of my pay?"),
    ("tax", "Is the laundry cost for my chef whites something I can deduct at tax time?"),
    ("tax", "I got back pay this year. Will it bump me into a higher income tax bracket?"),
    ("tax", "Work out the PAYG withholding on a $1,200 fortnightly wage for me."),
    ("tax", "Do I need to declare cash tips on my income tax return?"),
    ("tax", "Can you check whether my employer is withholding the right amount of tax?"),
    ("tax", "I'm a sole trader cleaning offices. Do I need to register for GST?"),
    ("tax", "How do I claim my work boots as a tax deduction?"),
    ("migration", "I'm on a working holiday visa. Can I stay with the same farm employer for more than six months?"),
    ("migration", "My student visa says 48 hours a fortnight. Does a shift that crosses midnight count twice?"),
    ("migration", "Will my restaurant boss be able to sponsor me for residency?"),
    ("migration", "What are my chances of getting a skilled visa as a forklift driver?"),
    ("migration", "My visa expires next month. Can I keep working while the new application is processed?"),
    ("migration", "Do I need to tell immigration that I changed warehouses?"),
    ("migration", "Can my partner work full time on my dependent visa?"),
    ("legal_representation", "I want you to be my advocate at the conciliation conference next Tuesday."),
    ("legal_representation", "Can you sign and send a legal letter to my landlord-employer for me?"),
    ("legal_representation", "Please act for me in court against the labour hire company."),
    ("legal_representation", "Could you negotiate my separation terms with my employer's lawyer?"),
    ("legal_representation", "Will the desk take my case to the tribunal and argue it for me?"),
    ("legal_representation", "I need a solicitor to review and sign off on my restraint clause. Can you be that solicitor?"),
    ("legal_representation", "Can you represent me at mediation with the franchise owner?"),
    ("medical", "My hands crack from the cleaning chemicals. Which cream should I use?"),
    ("medical", "I keep getting headaches after night shifts. What's causing them?"),
    ("medical", "Can I go back to lifting pallets two weeks after my hernia operation?"),
    ("medical", "How much ibuprofen is safe to take during a double shift?"),
    ("medical", "Do my symptoms sound like carpal tunnel from scanning groceries?"),
    ("medical", "Should I get a tetanus shot after cutting my hand on a box cutter?"),
    ("other", "Plan a three-day holiday for me with my annual leave."),
    ("other", "What's the best cryptocurrency to buy with my overtime money?"),
    ("other", "Can you translate my resignation letter into French?"),
    ("other", "Tell me a joke to cheer up the night crew."),
]

# -- escalations ---------------------------------------------------------------------------------

UNDERPAYMENTS = [
    "Going through a year of pay slips I found ${amount} in Saturday penalties that were never paid.",
    "The bakery has been paying me as Level 1 when I'm Level 3. The difference comes to about ${amount}.",
    "My employer owes me ${amount} in overtime from the Christmas rush. What's my overtime rate?",
    "I've been underpaid ${amount} since January according to my union's calculator.",
    "The agency never paid my night allowance; it adds up to ${amount}. What's the night shift allowance for Level 2 on the Inland Warehousing Award?",
    "My final pay was short by ${amount} after I resigned.",
    "They skipped my public holiday loading all year. I think I'm owed ${amount}.",
    "I'm a casual who never got the casual loading. My estimate is ${amount} owing.",
    "The cleaning contractor short-paid every shift for eight months, roughly ${amount} in total.",
]
UNDERPAYMENT_AMOUNTS = ["501", "650", "1,200", "2,340.50", "875", "12,600", "5,100", "980", "3,050",
                        "520.75", "740", "1,999", "4,400", "9,150", "600", "15,000", "2,020", "705"]

DISMISSALS = [
    "I was dismissed this afternoon for being five minutes late. What can I do?",
    "The manager fired me by text message after I complained about my roster.",
    "I was sacked the day after I asked why my penalty rates were missing. Can you tell me my Sunday rate too?",
    "My employment was terminated while I was on personal leave. Is that allowed?",
    "They let me go after I refused to work a double shift. What are my options?",
    "I've been dismissed for reporting a safety hazard in the freezer room.",
    "Two weeks after I told them I was pregnant they terminated my employment.",
    "I was fired for asking for a copy of my timesheets.",
    "The store let me go on the spot and won't say why. What notice should I have had?",
    "My boss dismissed me and says I won't get my final pay until I return the uniform.",
    "I was sacked for taking my meal break. What is the meal break rule anyway?",
    "After five years they fired me with no warning, claiming restructure.",
    "Got terminated yesterday for joining the union. Help?",
    "The cleaning company dismissed me after I asked about the broken shift rules.",
]

# -- silent guidance ------------------------------------------------------------------------------

SILENT = [
    "Is there paid leave for donating blood?",
    "Does my employer have to pay me while I'm on jury duty?",
    "Is there an allowance for speaking a second language with customers?",
    "How much long service leave do I get after ten years?",
    "Can I take paid leave to volunteer with the fire brigade?",
    "Does my employer have to provide sunscreen for outdoor loading work?",
    "Is there an allowance for keeping my own set of chef's knives sharpened?",
    "Do I get an extra payment for working during a heatwave?",
    "Can my employer stop me wearing earrings on the shop floor?",
    "Is there a bonus for perfect attendance over a year?",
    "Does the desk's guidance say anything about a first aid allowance?",
    "Am I entitled to a free staff meal on every shift?",
    "Can I be paid extra for training a new apprentice on the weekend?",
    "Is there a relocation allowance if the warehouse moves to another town?",
    "Is there an allowance for wearing a microphone headset all shift?",
    "Does the guidance cover payment for judging a cooking competition on behalf of the venue?",
    "Can I claim the cost of my own reading glasses for fine inventory work?",
    "Is there a rule on how hot the kitchen can get before we stop work?",
    "Do I get a discount on store products as part of my entitlements?",
    "Is there paid leave for attending my own graduation?",
    "What's the allowance for storing company equipment in my garage?",
    "Is there compensation for early morning alarm call-outs on a pager?",
    "Do cleaners get an allowance for cleaning up biohazards?",
    "Can my employer require me to share my social media passwords?",
    "Is there paid time off for attending my child's school sports day?",
    "Is there a minimum temperature for the break room?",
    "Do we get a height allowance for cleaning windows above three storeys?",
    "Is there leave for moving house?",
    "Does anything cover payment for wearing a costume during a themed week at the bar?",
    "Is there an allowance for working with a guide dog in the store?",
]

# -- identifiers --------------------------------------------------------------------------------

IDENTIFIER_LEADS = [
    "TFN for reference: {tfn}.",
    "I'll include my tax file number, {tfn}, so you can find me.",
    "Staff ID {employee_id} here.",
    "This is employee {employee_id} from the Bayview store.",
    "Payroll asked me to quote {employee_id} and TFN {tfn}.",
    "(my TFN: {tfn})",
]
TFNS = ["391 204 887", "604118253", "512-770-094", "238 415 906", "870 332 151", "147 902 638",
        "725064319", "318 557 240"]
EMPLOYEE_IDS = ["EMP-20417", "E551023", "STF-3381", "EMP-90562", "E708114", "STF-7724"]


def rate_phrase(rate_type: str) -> str:
    return RATE_WORDS[rate_type]


def reserved_combos() -> list[tuple[str, str, str]]:
    return [combo for combo in itertools.product(impl.AWARDS, impl.CLASSIFICATIONS, impl.RATE_TYPES)
            if impl.reserved_for_eval(*combo)]


def lookup_call(award, classification, rate_type, date_choices) -> dict:
    return {"lookup_rate": {"award": [award], "classification": [classification],
                            "rate_type": [rate_type], "effective_date": date_choices}}


def search_call(award: str | None) -> dict:
    return {"search_guidance": {"query": ["$any"], "award": ["", award] if award else [""]}}


def make_case(number: int, category: str, request: str, expected_calls: list[dict],
              outcome: str, rules: list[str], expected: dict) -> dict:
    case_id = f"heldout-{number:04d}"
    case = {
        "id": case_id,
        "category": category,
        "question": [[{"role": "user", "content": request}]],
        "expected_outcome": "answer" if outcome == "silent" else outcome,
        "rules": rules,
        "task": {"id": case_id, "request": request, "category": category, "expected": expected},
    }
    if len(expected_calls) == 1:
        case["ground_truth"] = expected_calls
    else:
        case["expected_calls"] = expected_calls
    return case


def rate_cases() -> list[tuple]:
    cases = []
    combos = reserved_combos()
    for index, template in enumerate(RATE_TEMPLATES * 3):
        award, classification, rate_type = combos[(index * 7) % len(combos)]
        phrase, choices, lookup_date = RATE_DATES[index % len(RATE_DATES)]
        request = template.format(level=classification, award=award, words=rate_phrase(rate_type), date=phrase)
        rate = impl.expected_rate(award, classification, rate_type, lookup_date)
        calls = [lookup_call(award, classification, rate_type, choices), ANY_ANSWER]
        expected = impl.expected_block("answer", ["lookup_rate", "final_answer"], rate=rate)
        cases.append(("rate_lookup", request, calls, "answer", ["lookup-before-stating"], expected))

    for index, amount in enumerate(SHORTFALL_AMOUNTS):
        template, _ = SHORTFALL_TEMPLATES[index % len(SHORTFALL_TEMPLATES)]
        award, classification, rate_type = combos[(index * 5 + 3) % len(combos)]
        phrase, choices, lookup_date = RATE_DATES[(index + 2) % len(RATE_DATES)]
        shown = f"{amount:g}" if isinstance(amount, int) else f"{amount:.2f}"
        request = template.format(amount=shown, level=classification, award=award,
                                  words=rate_phrase(rate_type), date=phrase)
        rate = impl.expected_rate(award, classification, rate_type, lookup_date)
        calls = [lookup_call(award, classification, rate_type, choices), ANY_ANSWER]
        expected = impl.expected_block("answer", ["lookup_rate", "final_answer"], rate=rate,
                                       underpayment_amount=float(amount))
        cases.append(("rate_lookup", request, calls, "answer",
                      ["lookup-before-stating", "escalate-underpayment"], expected))
    return cases


def guidance_cases() -> list[tuple]:
    cases = []
    for passage_id, award, question in GUIDANCE_QUESTIONS:
        calls = [search_call(award), ANY_ANSWER]
        expected = impl.expected_block("answer", ["search_guidance", "final_answer"], passage_ids=[passage_id])
        cases.append(("guidance", question, calls, "answer", ["cite-passages"], expected))
    return cases


def rate_and_guidance_cases() -> list[tuple]:
    cases = []
    for index in range(30):
        passage_id, rate_type, template, higher = RATE_AND_GUIDANCE[index % len(RATE_AND_GUIDANCE)]
        options = [(award, level) for award in impl.AWARDS for level in impl.CLASSIFICATIONS
                   if not (higher and level == "Level 1")]
        # Prefer combinations reserved for the eval set; fall back to the rest in order.
        options.sort(key=lambda option: not impl.reserved_for_eval(option[0], option[1], rate_type))
        award, classification = options[(index // len(RATE_AND_GUIDANCE)) * 5 % len(options)]
        phrase, choices, lookup_date = RATE_DATES[(index + 1) % len(RATE_DATES)]
        request = template.format(level=classification, award=award, date=phrase)
        rate = impl.expected_rate(award, classification, rate_type, lookup_date)
        calls = [lookup_call(award, classification, rate_type, choices), search_call(award), ANY_ANSWER]
        expected = impl.expected_block("answer", ["lookup_rate", "search_guidance", "final_answer"],
                                       rate=rate, passage_ids=[passage_id])
        cases.append(("rate_and_guidance", request, calls, "answer",
                      ["lookup-before-stating", "cite-passages"], expected))
    return cases


def refusal_cases() -> list[tuple]:
    cases = []
    for category, request in REFUSALS:
        calls = [{"refuse": {"reason": ["$any"], "category": [category]}}]
        expected = impl.expected_block("refuse", ["refuse"], refusal_category=category)
        cases.append(("refusal", request, calls, "refuse", ["refuse-out-of-scope"], expected))
    return cases


def escalation_cases() -> list[tuple]:
    cases = []
    for index, amount in enumerate(UNDERPAYMENT_AMOUNTS):
        request = UNDERPAYMENTS[index % len(UNDERPAYMENTS)].format(amount=amount)
        expected = impl.expected_block("escalate", ["escalate_to_officer"],
                                       underpayment_amount=float(amount.replace(",", "")))
        cases.append(("escalation", request, [ANY_ESCALATION], "escalate", ["escalate-underpayment"], expected))
    for request in DISMISSALS:
        expected = impl.expected_block("escalate", ["escalate_to_officer"], dismissal=True)
        cases.append(("escalation", request, [ANY_ESCALATION], "escalate", ["escalate-underpayment"], expected))
    return cases


def silent_cases() -> list[tuple]:
    cases = []
    for request in SILENT:
        expected = impl.expected_block("silent", ["search_guidance", "final_answer"])
        cases.append(("silent", request, [search_call(None), ANY_ANSWER], "silent", ["say-when-silent"], expected))
    return cases


def identifier_cases() -> list[tuple]:
    """Build identifier cases by placing an identifier before other eval requests,
    including escalations and refusals."""
    bases = (rate_cases()[1:42:5] + guidance_cases()[2:42:4] + escalation_cases()[3:32:9]
             + refusal_cases()[4:32:10] + silent_cases()[5:30:8])
    cases = []
    for index, (_, request, calls, outcome, rules, expected) in enumerate(bases):
        lead = IDENTIFIER_LEADS[index % len(IDENTIFIER_LEADS)].format(
            tfn=TFNS[index % len(TFNS)], employee_id=EMPLOYEE_IDS[index % len(EMPLOYEE_IDS)])
        expected = dict(expected, identifiers=impl.identifiers_in(lead))
        cases.append(("identifier", f"{lead} {request}", calls, outcome,
                      rules + ["no-identifier-echo"], expected))
    return cases


def build() -> list[dict]:
    groups = [rate_cases(), guidance_cases(), rate_and_guidance_cases(), refusal_cases(),
              escalation_cases(), silent_cases(), identifier_cases()]
    rows = []
    for number, case in enumerate(itertools.chain.from_iterable(groups), start=1):
        rows.append(make_case(number, *case))
    return rows


def main() -> int:
    rows = build()
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(rows)} cases to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
