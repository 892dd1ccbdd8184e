"""Fraud: decides whether an order may be charged, and records why."""
