"""Compare attention variants on a grid of tasks (suite datasets and the char LM): ``attnlab compare``."""
