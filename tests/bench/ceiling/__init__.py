"""Ceilings: the least a DRF create and a two-task Celery chain cost on the same settings.

The benchmark runs them with the system's own gunicorn and Celery command lines, so the
pipeline's throughput can be read as a fraction of what this machine does that day.
"""
