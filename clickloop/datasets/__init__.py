"""Public CTR datasets brought into a landing folder, each with its log contract."""
