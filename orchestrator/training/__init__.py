"""Training jobs: the job spec users submit, and the manager that runs and preempts them."""
