"""Evaluation for mm-excitor: generate model outputs, then score them the way published numbers are scored.

Two stages that run separately: `generate` writes the official results files, `score` turns a results file into
a report. See eval/README.md.
"""
