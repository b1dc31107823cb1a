"""Compare attention variants on a task suite: ``attnlab compare``."""
