"""The parts behind `index.embeddings`: model folders, tokenizer, ONNX export cache, runners."""
