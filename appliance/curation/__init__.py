"""Curation: recorded traces in, a verified, masked, versioned training set out.

verify    format, execution and policy verification of each trace (`trace_verdicts`)
review    accept, reject or edit a trace by hand (`trace_reviews`)
select    rejection sampling among the verified samples of a task
split     one example per decision; train/validation by task
dedup     exact and near-duplicate detection and the eval-set leakage guard
balance   counts per tool, rule and outcome; floors and caps
render    rendering, tokenisation and loss masking for the target base
dataset   the versioned dataset folder and the `datasets` table
pipeline  the funnel, and `run_job` for the job kind "curate"
"""
