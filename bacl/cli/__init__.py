"""The command-line entry points (`bacl-train`, `bacl-sweep`, `bacl-extract`, `bacl-report`);
`python experiments/<name>.py` calls the same `main`."""
