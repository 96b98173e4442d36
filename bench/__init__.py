"""Benchmarks that build models exactly as train.py does, on synthetic data: no MLflow."""
