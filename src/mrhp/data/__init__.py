"""Data: reading the official and user formats, text, word vectors, the feature store, prepared datasets."""
