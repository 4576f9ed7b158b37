"""Conditional models that read: text trunks, gate and expert heads on token ids."""
