"""What a model needs: its shape (GGUF file, Ollama store, catalog) and its memory estimate."""
