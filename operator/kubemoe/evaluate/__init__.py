"""`kubemoe eval`: a pipeline against each of its models alone (and its sweep variants) on the user's tasks."""
