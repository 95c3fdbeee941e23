"""Evaluation of a (pruned) model: perplexity, zero-shot tasks, speed, memory, the GGUF file in llama.cpp and
the provenance every result records."""
