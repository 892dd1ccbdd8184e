"""Messaging plumbing: envelopes, outbox and inbox, relay, consumer base, topology, dead letters.

This app never imports a domain app; domain apps build on it.
"""
