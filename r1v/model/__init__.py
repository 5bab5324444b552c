"""The VisionLanguageModel glue, its builder and freeze policy."""
