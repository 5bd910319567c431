"""Vectorized kernels on Arrow tables: hashing to key groups, mergeable partial aggregates, expressions.

The lowest layer of raystream: it imports nothing of the plan, the runtime or the API.
"""
