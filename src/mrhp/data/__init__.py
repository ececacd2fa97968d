"""Data: readers of the official, JSON-lines and public dump formats, text and word vectors, the feature store,
prepared datasets and batches."""
