"""The conversion pipeline: Hugging Face checkpoint -> GGUF -> llama.cpp quantizations."""
