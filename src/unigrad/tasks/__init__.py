"""Built-in tasks that generate datasets (``arithmetic``)."""
