"""Experiment system: absl launcher, trainers, input pipeline, checkpoints and metrics.

It uses tnjax; nothing in tnjax imports it.
"""
