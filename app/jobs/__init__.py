"""Jobs: the model and the store, submitting, executing one job, and the runner and worker that drive it."""
