"""Training sets, the toy arithmetic task, benchmark loaders and prompt templates."""
