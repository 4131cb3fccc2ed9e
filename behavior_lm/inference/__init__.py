"""Inference: the ``next-behavior`` pipeline and the next-event distribution it reads."""
