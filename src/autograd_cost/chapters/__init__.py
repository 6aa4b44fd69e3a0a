"""Chapter helpers: what a notebook needs beyond the instruments, one module per notebook."""
