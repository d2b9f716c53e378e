"""Producers: float tensors in, what a codec stores out (quantizers, trellis, rate control, SuRP,
sensitivity). They never import the reader or the writer; :mod:`rdformat.api` joins them.
"""
