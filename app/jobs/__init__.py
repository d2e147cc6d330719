"""Jobs: the model and the store, submitting, and the runner and worker that execute them."""
