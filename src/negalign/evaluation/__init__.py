"""Evaluation: scorers (refusal, harm classifier, LLM judge, reward model), measurements with bootstrap
CIs, `negalign evaluate` as one function per section, the report, and the demo's before/after table.
"""
