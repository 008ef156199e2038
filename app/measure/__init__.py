"""Measuring models on this machine: load tests (bench), quality (eval), the quant ladder, stored results."""
