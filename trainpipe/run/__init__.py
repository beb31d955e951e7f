"""One run from config to summary: the run directory and its files, `train()`, `resume()`,
`evaluate_checkpoint()`, checkpoint files, and what is printed to the console."""
