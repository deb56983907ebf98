"""Instruction data on real images: the JSONL record format, the dataset the trainer reads, and the builder
(an LLM proposes instructions, a VLM validates them) behind ``pairfree data build``."""
