"""Export a trained sparse recommender as a serving artifact: packed CSR tables, ONNX, FAISS, manifest.

The reader (``export.artifact``, ``export.index``) imports numpy, scipy and faiss only; the writer
(``export.exporter``) needs torch. Nothing is imported here, so ``import export.artifact`` stays light.
"""
