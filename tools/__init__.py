"""Benchmarks, experiments and generators of the spec's vectors (importable: ``from tools import gen_vectors``)."""
